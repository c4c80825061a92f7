"""Ed25519 signatures over an audit export's manifest: who sealed it, not only that it is intact.

The chain proves order and the manifest proves the files are as written with it; anyone who can
rewrite the files can rewrite both. A signature by a key the company keeps offline (`notify audit
keygen`) is what a regulator can check against the company's published public key.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from .. import files
from ..errors import InputError

SIGNATURE = "manifest.sig"


def keygen(private: Path) -> Path:
    """Writes a new private key (PEM, 0600) and its public key beside it (<name>.pub); returns the latter."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not private.name or private.is_dir():
        raise InputError(f"{str(private)[:200]}: a directory; the key is a file of its own",
                         hint="name the private key's file, such as notify-audit.key (its .pub is written beside it)")
    public = private.with_name(private.name + ".pub")
    for p in (private, public):
        if p.exists() or p.is_symlink():
            raise InputError(f"{p}: already exists; a signing key is never overwritten", hint="choose another name")
    key = Ed25519PrivateKey.generate()
    files.write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    files.write_private(public, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return public


def sign(manifest: bytes, private: Path) -> bytes:
    """The signature file's content: base64 of the Ed25519 signature over the manifest's bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"--sign-key {private}: not a private key notify can use ({e})",
                         hint="make one with `notify audit keygen --out KEY`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"--sign-key {private}: not an Ed25519 key", hint="make one with `notify audit keygen --out KEY`")
    return base64.b64encode(key.sign(manifest)) + b"\n"


def public_pem(private: Path) -> str:
    """The public key of a private signing key, as PEM text: what the manifest names as its signer."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def fingerprint(pem: str) -> str:
    """SHA-256 of a public key's PEM text: short enough to read out and compare with the one published."""
    return hashlib.sha256(pem.encode()).hexdigest()


def check(manifest: bytes, signature: bytes, public: Path | str) -> str | None:
    """None when `signature` is the key's signature over `manifest`; otherwise what is wrong. `public` is a
    key file (--key) or the PEM text the manifest names as its signer."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    what = f"--key {public}" if isinstance(public, Path) else "the manifest's signer key"
    try:
        key = serialization.load_pem_public_key(public.read_bytes() if isinstance(public, Path) else public.encode())
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"{what}: not a public key notify can use ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{what}: not an Ed25519 public key")
    try:
        key.verify(base64.b64decode(signature.strip(), validate=True), manifest)
    except (InvalidSignature, ValueError):
        return "the signature does not match the manifest and this key: one of them was changed, or another key signed it"
    return None
