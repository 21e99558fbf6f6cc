"""A summary of a namespace's variables (names, types, shapes, columns, small previews), and its
rendering as the text the model reads.

Standard library only, imports inside :func:`summarize_namespace`: the user's server sends that
function's source to a running kernel to describe its variables (any Python kernel works), and
the server imports this module without IPython.
"""

from __future__ import annotations

from typing import Any


def summarize_namespace(
    ns: dict[str, Any], limit: int = 40, preview_rows: int = 0, preview_max_rows: int = 100_000
) -> list[dict[str, Any]]:
    """Describe the user's variables: dataframes, arrays, tensors, collections and scalars.

    Names starting with ``_``, modules, functions, classes and IPython's own names are left out.
    Nothing is computed that could be slow on a big object (no ``repr`` of a whole dataframe):
    with ``preview_rows``, a dataframe of at most ``preview_max_rows`` rows also gets its first
    rows as CSV (``preview``, at most 600 characters).
    """
    import types

    def preview(frame: Any) -> str | None:
        if preview_rows <= 0 or int(frame.shape[0]) > preview_max_rows:
            return None
        head = frame.head(preview_rows)
        if hasattr(head, "write_csv"):  # polars
            text = str(head.write_csv())
        else:  # pandas
            text = str(head.to_csv(index=False))
        return text if len(text) <= 600 else text[:599] + "…"

    skip = {"In", "Out", "exit", "quit", "get_ipython", "open"}
    out: list[dict[str, Any]] = []
    for name, value in list(ns.items()):
        if name.startswith("_") or name in skip:
            continue
        if isinstance(
            value, types.ModuleType | types.FunctionType | type | types.BuiltinFunctionType
        ):
            continue
        kind = type(value)
        mod = kind.__module__.split(".")[0]
        item: dict[str, Any] = {"name": name, "type": kind.__name__}
        try:
            if (
                mod in ("pandas", "polars")
                and hasattr(value, "columns")
                and hasattr(value, "shape")
            ):
                item["kind"] = "dataframe"
                item["shape"] = list(value.shape)
                dtypes = value.dtypes
                cols = [str(c) for c in list(value.columns)[:30]]
                if hasattr(dtypes, "items"):
                    item["dtypes"] = {str(k): str(v) for k, v in list(dtypes.items())[:30]}
                else:
                    item["dtypes"] = dict(zip(cols, (str(d) for d in dtypes), strict=False))
                item["columns_total"] = len(value.columns)
                rows = preview(value)
                if rows:
                    item["preview"] = rows
            elif (
                mod in ("pandas", "polars") and hasattr(value, "dtype") and hasattr(value, "shape")
            ):
                item["kind"] = "series"
                item["shape"] = list(value.shape)
                item["dtype"] = str(value.dtype)
            elif (
                hasattr(value, "shape")
                and hasattr(value, "dtype")
                and mod
                in (
                    "numpy",
                    "torch",
                    "jax",
                    "jaxlib",
                    "cupy",
                    "tensorflow",
                )
            ):
                item["kind"] = "array"
                item["shape"] = [int(d) for d in value.shape]
                item["dtype"] = str(value.dtype)
            elif isinstance(value, bool | int | float | complex):
                item["kind"] = "scalar"
                item["value"] = repr(value)
            elif isinstance(value, str | bytes):
                item["kind"] = "scalar"
                item["len"] = len(value)
                item["value"] = repr(value[:60]) + ("…" if len(value) > 60 else "")
            elif isinstance(value, list | tuple | set | frozenset | dict):
                item["kind"] = "collection"
                item["len"] = len(value)
            elif mod in ("builtins", "IPython", "ipykernel") or callable(value):
                continue
            else:
                item["kind"] = "object"
        except Exception:
            item["kind"] = "object"
        out.append(item)
        if len(out) >= limit:
            break
    return out


def render_variables(variables: list[dict[str, Any]]) -> str:
    """One line per variable, for a prompt."""
    lines = []
    for v in variables:
        kind = v.get("kind")
        head = f"- {v['name']}: {v['type']}"
        if kind == "dataframe":
            shape = "×".join(str(d) for d in v.get("shape", []))
            cols = ", ".join(f"{c} ({t})" for c, t in (v.get("dtypes") or {}).items())
            more = v.get("columns_total", 0) - len(v.get("dtypes") or {})
            lines.append(
                f"{head} {shape}; columns: {cols}" + (f" and {more} more" if more > 0 else "")
            )
            if v.get("preview"):
                rows = str(v["preview"]).strip().replace("\n", "\n    ")
                lines.append(f"  first rows of {v['name']} (CSV):\n    {rows}")
        elif kind in ("array", "series"):
            shape = "×".join(str(d) for d in v.get("shape", []))
            lines.append(f"{head} shape {shape}, dtype {v.get('dtype')}")
        elif kind == "scalar":
            lines.append(f"{head} = {v.get('value')}")
        elif kind == "collection":
            lines.append(f"{head} of {v.get('len')} items")
        else:
            lines.append(head)
    return "\n".join(lines)
