"""The data sets shipped inside the package (``data/embedded/*.gz``, the original files' bytes) and
their CC BY 4.0 credits; read when no data folder holds the files."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from importlib import resources

from modelshield.errors import DataError, MissingDataError

__all__ = ["ATTRIBUTIONS", "EMBEDDED_DATA", "EmbeddedFile", "embedded_source", "read_embedded"]

_LICENCE = "licensed under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"


@dataclass(frozen=True, slots=True)
class EmbeddedFile:
    """One embedded data set: its original file name, digest and credit line."""

    file: str
    """The original file name; the package holds ``embedded/<file>.gz``."""
    sha256: str
    """SHA-256 of the original (decompressed) bytes: the digest the loaders report."""
    credit: str


EMBEDDED_DATA: dict[str, EmbeddedFile] = {
    "phishing-websites": EmbeddedFile(
        file="Training_Dataset.arff",
        sha256="0dfcd84ccdedca6e1be2ce26452c1f1089ac3f839b9a1b0ab1cdcf6d895f9a70",
        credit=(
            '"Phishing Websites" by Rami M. Mohammad and Lee McCluskey, UCI Machine '
            "Learning Repository (2015), https://archive.ics.uci.edu/dataset/327/phishing+websites, "
            f"doi:10.24432/C51W2X, {_LICENCE}; the file Training_Dataset.arff is shipped unchanged "
            "(gzip-compressed)."
        ),
    ),
    "sms-spam": EmbeddedFile(
        file="SMSSpamCollection",
        sha256="7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
        credit=(
            '"SMS Spam Collection" v.1 by Tiago A. Almeida and José María Gómez Hidalgo, UCI Machine '
            "Learning Repository (2012), https://archive.ics.uci.edu/dataset/228/sms+spam+collection, "
            "doi:10.24432/C5CC84, copyright (c) Tiago Agostinho de Almeida and José María Gómez "
            f"Hidalgo, {_LICENCE}; the file SMSSpamCollection is shipped unchanged (gzip-compressed) "
            "with the authors' readme (SMSSpamCollection-readme.txt)."
        ),
    ),
}
"""The embedded data sets by built-in name: the original file, its digest and its credit."""

ATTRIBUTIONS: dict[str, str] = {name: e.credit for name, e in EMBEDDED_DATA.items()}
"""Built-in data set name -> the credit line of its embedded copy (authors, title, source, DOI,
licence, changes), as in ``modelshield/data/embedded/ATTRIBUTION.txt``."""


def embedded_source(name: str) -> str:
    """The ``source`` a loader reports for the embedded copy of ``name``."""
    return f"modelshield (embedded copy of {EMBEDDED_DATA[name].file}, CC BY 4.0)"


def read_embedded(name: str, *, owner: str, fix: str) -> bytes:
    """The original bytes of the embedded copy of ``name``, checked against its recorded SHA-256.

    Raises:
        MissingDataError: the package lacks the file (an install without its package data);
            the message names ``fix`` (put the file in a data folder) and a reinstall.
        DataError: the file is not gzip or its bytes are not the original's (a damaged install).
    """
    entry = EMBEDDED_DATA[name]
    where = f"modelshield/data/embedded/{entry.file}.gz"
    reinstall = "reinstall modelshield (pip install --force-reinstall modelshield)"
    try:
        packed = resources.files("modelshield.data").joinpath("embedded", f"{entry.file}.gz").read_bytes()
    except OSError as exc:
        raise MissingDataError(
            f"{owner}: the embedded copy {where} must be installed with the package; got "
            f"{type(exc).__name__}: {exc}. {fix}, or {reinstall}."
        ) from exc
    try:
        raw = gzip.decompress(packed)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{owner}: the embedded copy {where} must be gzip data; got {type(exc).__name__}: {exc}. "
            f"{reinstall[0].upper()}{reinstall[1:]}."
        ) from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != entry.sha256:
        raise DataError(
            f"{owner}: the embedded copy {where} must hold the original {entry.file} (sha256 "
            f"{entry.sha256[:12]}...); got {digest[:12]}.... {reinstall[0].upper()}{reinstall[1:]}."
        )
    return raw
