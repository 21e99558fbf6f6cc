"""Model backends from plugins (the ``oraculo.models.backends`` entry point group): one whose
module does not import is logged and reported in ``load_errors``; the other models still load.

The plugin is a real installed distribution as importlib.metadata finds it (a ``.dist-info``
with ``entry_points.txt``) in a folder put on ``sys.path`` for this test only."""

from __future__ import annotations

from pathlib import Path

import pytest

from oraculo.models.app import ModelServiceApp
from oraculo.models.registry import DEFAULT_MODELS


def test_a_backend_plugin_that_fails_to_import_is_reported_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    dist = site / "oraculo_broken_backend-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: oraculo-broken-backend\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "[oraculo.models.backends]\nbroken = oraculo_broken_backend:Backend\n"
    )
    (site / "oraculo_broken_backend.py").write_text('raise ImportError("no such engine here")\n')
    monkeypatch.syspath_prepend(str(site))

    embedding = next(m for m in DEFAULT_MODELS if m["kind"] == "embedding")
    broken = {**embedding, "name": "broken-model", "backend": "broken"}
    app = ModelServiceApp(
        data_dir=str(tmp_path),
        usage_db_url=f"sqlite:///{tmp_path}/usage.db",
        models=[broken, embedding],
    )
    service = app._build_service()
    try:
        app._load_models(service)
        assert "no such engine here" in service.load_errors["broken-model"]
        assert [b.spec.name for b in service.registry] == [embedding["name"]]
    finally:
        service.store.close()
