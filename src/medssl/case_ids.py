"""Case ids that can leave a run: HMAC-SHA256 under a salt kept in the run.

Files that leave a run (``predictions_*.npz`` of ``medssl evaluate``, ``medssl embed``'s
tables) name cases by :func:`hash_case_ids` under the run's salt (:func:`run_salt`, the file
``RUN/case_id_salt``, owner-only), not in clear: whoever holds the salt can join them back to
the dataset's cases, nobody else can.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import numpy as np

from medssl.errors import MedsslError
from medssl.fileio import atomic_write

SALT_FILE = "case_id_salt"


def run_salt(run: Path) -> bytes:
    """The run's salt for hashing case ids (``RUN/case_id_salt``, made on first use).

    32 random bytes, hex-encoded, readable by the owner only: with it, hashed ids can be
    joined back to the dataset, so it is as sensitive as the ids themselves.
    """
    return read_salt(Path(run) / SALT_FILE)


def read_salt(path: Path) -> bytes:
    """The salt in the file ``path``, made there on first use (see :func:`run_salt`); for
    outputs made without a run (``medssl embed`` of a weights file)."""
    path = Path(path)
    if not path.is_file():
        # atomic_write gives every run file the umask's permissions; the salt is then
        # restricted to its owner
        atomic_write(path, lambda tmp: Path(tmp).write_text(secrets.token_hex(32) + "\n"))
        os.chmod(path, 0o600)
    try:
        salt = bytes.fromhex(path.read_text().strip())
    except ValueError:
        salt = b""
    if len(salt) < 16:
        raise MedsslError(f"{path} is not a salt of 32 hex bytes: delete it to make a new one")
    return salt


def hash_case_ids(case_ids: np.ndarray, salt: bytes) -> np.ndarray:
    """HMAC-SHA256 of each case id under ``salt``, as 32 hex characters.

    To join stored predictions back to a dataset, hash the dataset's case ids with the
    run's salt (:func:`run_salt`) and match.
    """
    return np.array(
        [hmac.new(salt, str(c).encode(), hashlib.sha256).hexdigest()[:32] for c in case_ids]
    )
