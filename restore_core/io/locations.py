"""Where a job reads and where it writes, compared however the paths are spelled.

A job must never write into what it reads: an output inside the input is read back as input by
the next run (a nightly quality run snowballs), an input inside the output is taken for earlier
output (and silently skipped), and ``--overwrite`` of a folder that is also an input deletes the
user's data. The same folder can be written many ways (``/a/b``, ``file:///a/b``, ``a/b/../b``,
``/a/b/``, a symlink to it; ``s3://bucket/p`` and ``s3a://bucket/p/``), so paths are compared
after :func:`location_key` normalises them: local paths resolved with ``realpath``, object-store
URLs reduced to protocol + ``bucket/key`` without empty or trailing parts.

Credentials never belong in a URL (``s3://KEY:SECRET@bucket``, a presigned ``?Signature=``):
they would reach logs, error lines and manifests. :func:`refuse_credentials_in_url` says so in
one line, without echoing them. They travel beside the URL instead, as a :class:`Location`: the
path and its fsspec ``storage_options``, one value wherever the two go together.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec

from restore_core.errors import UserError

#: Protocol aliases that name the same store.
_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "abfss": "abfs", "az": "abfs", "local": "file"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)
#: Query or fragment parameters that carry credentials (presigned URLs, SAS tokens).
_CREDENTIAL_PARAM = re.compile(
    r"[?&#;](x-amz-credential|x-amz-signature|x-amz-security-token|awsaccesskeyid|signature|sig|token|"
    r"access_token|secret|password|key)=",
    re.I,
)


#: fsspec protocols served by an optional extra: protocol -> (module fsspec imports, extra name).
OPTIONAL_PROTOCOLS = {
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "hf": ("huggingface_hub", "hf"),
}


@dataclasses.dataclass(frozen=True)
class Location:
    """A path (an fsspec URL: local folder, ``s3://bucket/prefix``, ``gs://...``, ``memory://...``)
    and the fsspec ``storage_options`` to open it with (``s3``: ``client_kwargs``, ``key``...;
    ``gs``: ``token``, ``project``...; ``hf``: ``token``, ``endpoint``...).

    The options hold credentials: ``str()`` is the path and ``repr()`` shows the path only, so a
    Location can go into a log line or an error message. Two Locations are equal when path and
    options are; the hash is the path's. A Location is never a config field (configs keep their
    YAML keys and expose Locations as properties), so the resume fingerprints never see one.
    """

    path: str
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, hash=False)

    def __post_init__(self) -> None:
        # A private copy (a plain dict: Locations travel to Ray workers, and a mapping proxy does
        # not pickle), so that a caller's later change to its dict does not change this value.
        object.__setattr__(self, "storage_options", dict(self.storage_options or {}))

    def __str__(self) -> str:
        return self.path

    def filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """The fsspec filesystem and the path inside it; a UserError when it cannot be opened
        (a protocol whose extra is not installed, options the filesystem refuses)."""
        require_protocol(self.path)
        try:
            return fsspec.core.url_to_fs(self.path, **self.storage_options)
        except (ImportError, ValueError) as exc:
            raise UserError(f"cannot open {self.path!r}: {exc}") from None

    def join(self, *parts: str) -> Location:
        """The location ``parts`` below this one, with the same storage options."""
        return Location(posixpath.join(self.path.rstrip("/"), *parts), self.storage_options)

    def at(self, path: str) -> Location:
        """Another path with the same storage options (an artifact read with the input's credentials)."""
        return Location(path, self.storage_options)

    def member(self, name: str, missing: Exception) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem and the path of the file ``name`` in this folder; ``missing`` raised
        when there is no such file."""
        fs, root = self.filesystem()
        path = posixpath.join(root, name)
        if not fs.exists(path):
            raise missing
        return fs, path

    def key(self) -> tuple[str, str]:
        """:func:`location_key` of the path: equal keys name the same folder, however spelled."""
        return location_key(self.path)


def require_protocol(url: str) -> None:
    """A one-line UserError naming the extra to install when ``url``'s protocol needs one."""
    protocol = fsspec.utils.get_protocol(url)
    needed = OPTIONAL_PROTOCOLS.get(protocol)
    if needed is None:
        return
    module, extra = needed
    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"{protocol}:// URLs need {module}, which is not installed: pip install 'imrestore[{extra}]' "
            f'(from a checkout: pip install ".[{extra}]")'
        ) from None


def _split(url: str) -> tuple[str, str]:
    """(protocol, rest) with ``""`` for a plain local path."""
    m = _SCHEME.match(url.strip())
    if not m:
        return "", url
    return m.group(1).lower(), m.group(2)


def refuse_credentials_in_url(url: str, key: str) -> None:
    """Raise a UserError (naming ``key``, never the secret) when ``url`` carries credentials."""
    protocol, rest = _split(url)
    if protocol and protocol != "file":
        authority = rest.split("/", 1)[0]
        if "@" in authority:
            raise UserError(
                f"{key} holds credentials before '@' ({protocol}://***@{authority.rsplit('@', 1)[1]}/...): "
                "put them in storage_options or the environment (AWS_ACCESS_KEY_ID...), never in the path"
            )
    if _CREDENTIAL_PARAM.search(url):
        raise UserError(
            f"{key} carries credentials in its query (a presigned or signed URL): give the plain "
            f"{protocol or 'file'} path and put credentials in storage_options or the environment"
        )


def location_key(url: str) -> tuple[str, str]:
    """``(protocol, normalised path)``: equal keys name the same folder.

    Local paths (plain or ``file://``) become absolute with symlinks resolved (``realpath``; the
    part that does not exist yet is normalised as written). Other protocols keep their
    ``bucket/key`` with repeated, ``.``/``..`` and trailing separators removed.
    """
    protocol, rest = _split(url)
    protocol = _ALIASES.get(protocol, protocol)
    if protocol in ("", "file"):
        return "file", os.path.realpath(os.path.abspath(rest or "."))
    rest = rest.split("?", 1)[0]
    norm = posixpath.normpath("/" + rest).lstrip("/")
    return protocol, "" if norm == "." else norm


def _inside(child: tuple[str, str], parent: tuple[str, str]) -> bool:
    if child[0] != parent[0]:
        return False
    p = parent[1].rstrip("/")
    return child[1] != parent[1] and (p == "" or child[1].startswith(p + "/"))


def check_apart(
    reads: Iterable[tuple[str, str]], writes: Iterable[tuple[str, str]], output_may_nest: bool = False
) -> None:
    """Refuse a written location equal to, inside, or holding a read one (and any URL with credentials).

    Parameters
    ----------
    reads, writes : iterable of (config key, URL)
        Empty URLs are ignored. Keys name the setting to change in the one-line error.
    output_may_nest : bool
        Allow an output *inside* a read folder: for jobs whose files can never be read back as
        input (bases or plots inside a folder of Parquet files). Equal folders are still refused.
    """
    reads = [(k, u) for k, u in reads if u]
    writes = [(k, u) for k, u in writes if u]
    for key, url in [*reads, *writes]:
        refuse_credentials_in_url(url, key)
    for wkey, wurl in writes:
        w = location_key(wurl)
        for rkey, rurl in reads:
            r = location_key(rurl)
            if r == w:
                raise UserError(
                    f"{wkey} ({wurl}) and {rkey} ({rurl}) are the same folder: "
                    "write somewhere outside what the job reads"
                )
            if _inside(w, r) and not output_may_nest:
                raise UserError(
                    f"{wkey} ({wurl}) is inside {rkey} ({rurl}): the output would be read back as input; "
                    f"choose an {wkey} outside it"
                )
            if _inside(r, w):
                raise UserError(
                    f"{rkey} ({rurl}) is inside {wkey} ({wurl}): the job would read and write the same files; "
                    f"choose an {wkey} that does not contain its inputs"
                )


def is_process_local(url: str) -> bool:
    """True for URLs only this process can see (``memory://``): Ray workers cannot read them."""
    return url.startswith("memory://")
