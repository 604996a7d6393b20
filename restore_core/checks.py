"""Checks that turn the usual first mistakes into one line saying what to do.

Two kinds:

- Up-front checks a job calls before any work starts: :func:`check_bases_fit` (bases made for
  another image size or channel count), :func:`check_gpus` (GPUs asked for, none present).
- :func:`explain_exception`: the CLI's last resort for errors raised by libraries (botocore's
  missing credentials, access denied, an unreachable endpoint), mapped to a one-line message.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import numpy as np

from restore_core import codec
from restore_core.bases import BasesMeta
from restore_core.errors import ArtifactError, ImageDecodeError, UserError


def _image_desc(shape: tuple[int, ...]) -> str:
    h, w = shape[:2]
    c = 1 if len(shape) == 2 else shape[2]
    kind = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}.get(c, f"{c}-channel")
    return f"{w}x{h} {kind}"


def check_bases_fit(meta: BasesMeta, image_shape: tuple[int, ...], where: str = "", bases_url: str = "") -> None:
    """Refuse bases that cannot restore an image of ``image_shape`` ((H, W) or (H, W, C)).

    - global bases need images of exactly their size (any channel layout they support);
    - RGB bases (channels 3) need images with at least 3 channels;
    - patch bases need images at least one patch wide and high.

    Gray bases restore colour images channel by channel, so they fit any channel count.

    Raises
    ------
    ArtifactError
        One line naming the bases, the image and what to do.
    """
    img = _image_desc(image_shape)
    at = f" ({where})" if where else ""
    bases = f"bases {bases_url} " if bases_url else "bases "
    relearn = "learn bases on images like these (python -m jobs learn-bases --set input.path=...)"
    channels = 1 if len(image_shape) == 2 else image_shape[2]
    if meta.channels == 3 and channels < 3:
        raise ArtifactError(
            f"{bases}are RGB ({meta.describe()}) but the images are {img}{at}: {relearn} with nmf.channels: gray"
        )
    h, w = image_shape[:2]
    if meta.mode == "global":
        bh, bw = meta.image_shape
        if (h, w) != (bh, bw):
            raise ArtifactError(
                f"{bases}were made for {bw}x{bh} images ({meta.describe()}) but the images are {img}{at}: "
                f"{relearn} with nmf.mode: patch (any size) or nmf.image_size: {w} if every image is {w}x{h}"
            )
    elif min(h, w) < meta.patch_size:
        raise ArtifactError(
            f"{bases}use {meta.patch_size}x{meta.patch_size} patches but the images are {img}{at}, "
            f"smaller than one patch: {relearn} with a smaller nmf.patch_size"
        )


def check_gpus(requested: float, available: float, key: str = "ray.num_gpus_per_actor") -> None:
    """Refuse a GPU request the cluster cannot meet (Ray would wait for it forever).

    ``requested`` is the GPUs one actor or worker asks for; ``available`` the cluster's total.
    """
    if requested > 0 and available < requested:
        have = "no GPU" if available <= 0 else f"only {available:g} GPU(s)"
        raise UserError(
            f"{key} is {requested:g} but the Ray cluster has {have}: set {key}: 0 to run on CPUs, "
            "or start Ray on a machine with a GPU"
        )


# ----------------------------------------------------------------------------- library errors


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it wraps (``__cause__``, ``__context__``, Ray's ``cause``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        # ``raise ... from None`` hides the context on purpose: the new error says it all.
        context = None if e.__suppress_context__ else e.__context__
        todo.extend([e.__cause__, context, getattr(e, "cause", None)])


def _names(exc: BaseException) -> set[str]:
    return {t.__name__ for t in type(exc).__mro__}


_CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment, or "
    "storage_options {key: ..., secret: ...} in the input/output section of the config; "
    "for a public bucket set storage_options {anon: true}"
)


def explain_exception(exc: BaseException) -> str | None:
    """A one-line message for a library error a user can fix, or None when it is a bug.

    Recognised (anywhere in the exception chain, Ray-wrapped too): a job's UserError raised in a
    Ray task (its own line, without Ray's traceback text), missing S3 credentials,
    invalid credentials, access denied, an unreachable storage endpoint, a GPU asked for
    without CUDA.
    """
    for e in _chain(exc):
        names = _names(e)
        if isinstance(e, UserError) and "RayTaskError" not in names and e is not exc:
            return str(e)  # a job's own one-line error, raised inside a Ray task
        if "NoCredentialsError" in names or "PartialCredentialsError" in names:
            return f"no S3 credentials found: {_CREDENTIALS_HINT}"
        text = str(e)
        if "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
            return f"the S3 credentials were refused ({text.splitlines()[0][:200]}): {_CREDENTIALS_HINT}"
        if "EndpointConnectionError" in names or "ConnectTimeoutError" in names:
            return (
                f"cannot reach the storage endpoint ({text.splitlines()[0][:200]}): check "
                "storage_options.endpoint_url (or AWS_ENDPOINT_URL) and that the service is running"
            )
        if isinstance(e, PermissionError) and ("s3" in text.lower() or "AccessDenied" in text):
            return (
                f"access denied by the storage ({text.splitlines()[0][:200]}): check that the credentials "
                "may read the input and write the output"
            )
        if "does not exist in our records" in text or "InvalidClientTokenId" in text or "ExpiredToken" in text:
            return f"the S3 credentials were refused ({text.splitlines()[0][:200]}): {_CREDENTIALS_HINT}"
        if isinstance(e, PermissionError) and ("Forbidden" in text or "AccessDenied" in text):
            return (
                f"the storage refused access ({text.splitlines()[0][:200]}): check the credentials "
                f"(wrong key or secret?) and that they may read the input and write the output; {_CREDENTIALS_HINT}"
            )
        code = getattr(e, "errno", None)
        if (isinstance(e, OSError) and code in (errno.ENOSPC, errno.EDQUOT)) or "No space left on device" in text:
            # In a Ray task the OSError may arrive only as text inside the RayTaskError.
            filename = getattr(e, "filename", None)
            where = f" writing {filename}" if filename else ""
            return (
                f"no space left on the device{where}: free space (or point the output at a larger disk) and "
                "rerun; a restore rerun keeps the shards already committed and resumes"
            )
        if isinstance(e, OSError) and code in (errno.EROFS, errno.EACCES, errno.EPERM) and e.filename:
            return f"cannot write {e.filename} ({e.strerror}): point the output at a folder this user may write"
        if "Torch not compiled with CUDA" in text or "no CUDA GPUs are available" in text:
            return "a CUDA GPU was asked for but none is visible here: set device: auto (or cpu) to run on the CPU"
    return None


def first_image_shape(rows: Iterator[dict[str, Any]], image_column: str, max_pixels: int) -> tuple[int, ...] | None:
    """The shape of the first decodable image among ``rows`` (at most 8 tried), or None."""
    for i, row in enumerate(rows):
        if i >= 8:
            break
        try:
            img, _ = codec.decode(codec.cell_bytes(row.get(image_column)), max_pixels)
        except ImageDecodeError:
            continue
        return tuple(np.shape(img))
    return None
