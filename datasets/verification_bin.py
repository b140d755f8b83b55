"""Verification pair sets (``<name>.bin``, docs/formats.md): safe loading and writing.

A ``.bin`` file is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N encoded images (pair i is
``bins[2i], bins[2i+1]``), ``issame_list`` holds N booleans. Real files come as Python-2 pickles of byte
strings, Python-3 pickles of ``bytes`` at any protocol, numpy arrays of encoded bytes and numpy bools.
A pickle can run arbitrary code when loaded, so :func:`load_bin` uses an unpickler that admits only
the handful of constructors those variants need; anything else is refused before it is called.
"""
import codecs
import glob
import io
import os
import pickle
import warnings

import cv2
import numpy as np

from .errors import DataError

IMAGE_SIZE = 112


class _Refused(pickle.UnpicklingError):
    """A global or construct that a verification .bin may not hold."""


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as Python-3 protocol 0-2 pickles use it for ``bytes``, limited to latin-1."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise _Refused(f"_codecs.encode is admitted only for latin-1 text, got {encoding!r}")
    return codecs.encode(text, "latin1", errors)


def _reconstruct(cls, shape, dtype_code):
    """``numpy.core.multiarray._reconstruct`` restricted to plain ``numpy.ndarray``."""
    if cls is not np.ndarray:
        raise _Refused(f"array reconstruction of {cls!r} is not admitted")
    if isinstance(dtype_code, bytes):
        dtype_code = dtype_code.decode("latin1")
    return np.core.multiarray._reconstruct(cls, shape, dtype_code)


def _numpy_global(module_tail, name):
    return getattr(__import__(f"numpy.core.{module_tail}", fromlist=[name]), name)


def _allowed_globals():
    scalar = _numpy_global("multiarray", "scalar")
    frombuffer = _numpy_global("numeric", "_frombuffer")
    table = {
        ("_codecs", "encode"): _latin1_encode,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("builtins", "bytearray"): bytearray,
        ("__builtin__", "bytearray"): bytearray,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


_ALLOWED = _allowed_globals()


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals real ``.bin`` files need (bytes, numpy arrays/bools)."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(
                f"refusing to load global '{module}.{name}': a verification .bin may only hold encoded "
                "images (bytes or numpy uint8 arrays) and booleans") from None

    def persistent_load(self, pid):
        raise _Refused("persistent ids are not admitted in a verification .bin")


def safe_unpickle(data, source="<bytes>"):
    """Unpickle ``data`` (bytes) admitting only the types of ``.bin`` files.

    Python-2 ``str`` objects come back as latin-1 text (converted to bytes by :func:`load_bin`).
    Raises :class:`DataError` naming ``source`` for a refused global or a malformed pickle.
    """
    try:
        return _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as err:
        raise DataError(f"{source}: not a safe verification pickle: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            OverflowError) as err:
        raise DataError(f"{source}: corrupt or truncated pickle ({err.__class__.__name__}: {err})") from None


def _as_bytes(item, index, path):
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("latin1")
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:  # any shape: cv2.imencode gives (n,) or (n, 1)
        return item.tobytes()
    if isinstance(item, np.ndarray) and item.dtype.kind in ("S", "O") and item.size == 1:
        return _as_bytes(item.reshape(-1)[0], index, path)
    if isinstance(item, np.bytes_):
        return bytes(item)
    raise DataError(f"{path}: image {index} is a {type(item).__name__}"
                    f"{'/' + str(item.dtype) if isinstance(item, np.ndarray) else ''}, "
                    "expected encoded image bytes")


def decode_image(buf, size=IMAGE_SIZE, what="image"):
    """Decode encoded image bytes to RGB uint8 ``(size, size, 3)``; returns ``(image, resized)``.

    Grey images are expanded to 3 channels; other sizes are resized (``resized`` is then True).
    Raises :class:`DataError` mentioning ``what`` when the bytes are not a decodable image.
    """
    arr = np.frombuffer(buf, dtype=np.uint8)
    img = cv2.imdecode(arr, cv2.IMREAD_COLOR) if arr.size else None
    if img is None:
        raise DataError(f"{what}: not a decodable image ({len(buf)} bytes)")
    resized = img.shape[0] != size or img.shape[1] != size
    if resized:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), resized


def load_bin(path, image_size=IMAGE_SIZE):
    """Load a verification ``.bin`` safely (docs/formats.md).

    Returns ``(images, issame)``: ``images`` uint8 ``(2N, image_size, image_size, 3)`` RGB and ``issame``
    bool ``(N,)``. Validates ``len(bins) == 2 * len(issame)`` and that every image decodes; raises
    :class:`DataError` naming the file otherwise. Images of another size are resized with a warning.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: verification set not found")
    with open(path, "rb") as f:
        data = f.read()
    obj = safe_unpickle(data, path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickled 2-tuple (bins, issame_list), got {type(obj).__name__}"
                        f"{' of length ' + str(len(obj)) if isinstance(obj, (tuple, list)) else ''}")
    bins, issame = obj
    if isinstance(bins, np.ndarray) and bins.dtype != object and bins.ndim == 2 and bins.dtype == np.uint8:
        bins = list(bins)
    try:
        issame = np.asarray(list(issame) if not isinstance(issame, np.ndarray) else issame)
    except TypeError:
        raise DataError(f"{path}: issame_list is a {type(issame).__name__}, expected a list of booleans") from None
    if issame.ndim != 1 or issame.dtype.kind not in "bui":
        raise DataError(f"{path}: issame_list must be a flat list of booleans, got dtype {issame.dtype} "
                        f"shape {issame.shape}")
    if issame.dtype.kind != "b" and not np.isin(issame, (0, 1)).all():
        raise DataError(f"{path}: issame_list holds values other than 0/1")
    issame = issame.astype(bool)
    try:
        num_bins = len(bins)
    except TypeError:
        raise DataError(f"{path}: bins is a {type(bins).__name__}, expected a list of encoded images") from None
    if num_bins != 2 * len(issame):
        raise DataError(f"{path}: {num_bins} images for {len(issame)} pairs; a .bin must hold exactly "
                        f"2 images per pair (expected {2 * len(issame)})")
    if num_bins == 0:
        raise DataError(f"{path}: holds no pairs")
    images = np.empty((num_bins, image_size, image_size, 3), dtype=np.uint8)
    num_resized = 0
    for i, item in enumerate(bins):
        buf = _as_bytes(item, i, path)
        images[i], resized = decode_image(buf, image_size, what=f"{path}: image {i} (pair {i // 2})")
        num_resized += resized
    if num_resized:
        warnings.warn(f"{path}: {num_resized} of {num_bins} images were not {image_size}x{image_size}; resized",
                      stacklevel=2)
    return images, issame


def encode_image(image_rgb, ext=".jpg", quality=95):
    """Encode an RGB uint8 ``(H, W, 3)`` image to bytes (``.jpg`` with ``quality`` or lossless ``.png``)."""
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image_rgb.dtype} {image_rgb.shape}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image_rgb[..., ::-1]), params)
    if not ok:
        raise ValueError(f"could not encode image as {ext}")
    return buf.tobytes()


def write_bin(path, images, issame, ext=".jpg", quality=95):
    """Write a verification set in the standard form: pickle of ``(list of bytes, list of bool)``.

    ``images``: 2N RGB uint8 ``(H, W, 3)`` arrays (or a ``(2N, H, W, 3)`` array) encoded as ``ext``, or 2N
    already-encoded ``bytes``. ``issame``: N booleans. Written atomically (temp file + rename).
    """
    path = os.fspath(path)
    issame = [bool(x) for x in issame]
    bins = []
    for item in images:
        if isinstance(item, (bytes, bytearray)):
            bins.append(bytes(item))
        else:
            bins.append(encode_image(item, ext, quality))
    if len(bins) != 2 * len(issame) or not issame:
        raise ValueError(f"{path}: need 2 images per pair and at least one pair, got {len(bins)} images for "
                         f"{len(issame)} pairs")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump((bins, issame), f, protocol=4)
    os.replace(tmp, path)
    return path


def find_bins(data_dir):
    """Every ``*.bin`` verification set in ``data_dir``: ``{name: path}`` sorted by name (name = file stem)."""
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: not a directory")
    return {os.path.splitext(os.path.basename(p))[0]: p for p in sorted(glob.glob(os.path.join(data_dir, "*.bin")))}
