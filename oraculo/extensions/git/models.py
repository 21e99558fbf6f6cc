"""The git feature's wire models."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: A host name, with an optional port: ``github.com``, ``git.example.org:8443``, ``127.0.0.1:9418``.
HOST = r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$"


class CredentialRequest(BaseModel):
    """Body of ``PUT /api/v1/git/credentials``: the user's login for one git host."""

    model_config = ConfigDict(extra="forbid")

    host: Annotated[str, Field(pattern=HOST)]
    username: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\s:@/]+$")]
    #: A password or, better, an access token; stored, never answered back.
    password: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\r\n]+$")]
    protocol: Annotated[str, Field(pattern=r"^https?$")] = "https"


class Credential(BaseModel):
    """A stored login, as ``GET /api/v1/git/credentials`` lists it (without its password)."""

    protocol: str
    host: str
    username: str


class CommitRequest(BaseModel):
    """Body of ``POST /api/v1/git/commits``: commit a file of a repository in the home, and
    push the branch to its remote."""

    model_config = ConfigDict(extra="forbid")

    path: Annotated[str, Field(min_length=1, max_length=1024)]
    message: Annotated[str, Field(min_length=1, max_length=10_000)]
    push: bool = True


class CommitResult(BaseModel):
    """What ``POST /api/v1/git/commits`` answers (201)."""

    repository: str  # the repository's folder, relative to the home
    commit: str  # the new commit's sha
    branch: str
    pushed: bool
    remote: str | None = None  # the remote's URL, without credentials
    output: str = ""  # git push's messages
