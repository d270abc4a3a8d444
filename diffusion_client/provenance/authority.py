"""Credentials that sign C2PA manifests: the user's certificate chain and key, or a local signing authority.

Without `--c2pa-cert/--c2pa-key`, a local authority is made once in the user's config directory
(`$XDG_CONFIG_HOME/flux2-split/c2pa`, else `~/.config/flux2-split/c2pa`): a root certificate and an ES256
end-entity certificate it issued (c2pa refuses a self-signed CA as a signer, and only accepts end-entity
certificates with an allowed extended key usage and an authority key identifier). Only the signer's key is
kept, mode 0600, and a signer key others can read is refused; the root's key is thrown away once it has signed,
so nothing else can be issued under it. Folders it makes are 0700 and certificates 0644, whatever the umask.
Verifiers show that signer as untrusted unless they add `root.pem` to their trust anchors.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusion_client.errors import InputError

AUTHORITY_FOLDER = "c2pa"
SIGNER_CHAIN = "signer.pem"  # the end-entity certificate, then the root
SIGNER_KEY = "signer.key"  # PKCS#8, mode 0600
ROOT_CERT = "root.pem"  # what a verifier adds to its trust anchors to trust this authority
VALID_YEARS = 10
MAX_PEM_BYTES = 1 << 20  # a chain of a few certificates is a few KiB
FOLDER_MODE, CERTIFICATE_MODE, KEY_MODE = 0o700, 0o644, 0o600


@dataclass(frozen=True)
class SigningCredentials:
    """A PEM certificate chain (signer first) and its PKCS#8 private key, with the algorithm they sign with."""

    chain_pem: bytes
    key_pem: bytes
    algorithm: str  # c2pa's name: "es256", "es384", "es512", "ps256" or "ed25519"
    source: str  # how messages name where they came from
    local_authority: Path | None = None  # the folder, when they are the local authority's
    created: bool = False  # the local authority was made by this call, not found
    notes: tuple[str, ...] = ()  # worth saying once the run has succeeded (a key others can read)


def config_folder() -> Path:
    """`$XDG_CONFIG_HOME/flux2-split`, else `~/.config/flux2-split`."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "flux2-split"


def _algorithm(key: Any, source: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise InputError(f"{source}: C2PA signs with EC P-256/P-384/P-521, RSA of 2048 bits or more, or Ed25519 keys")


def _read_pem(path: Path, what: str) -> bytes:
    try:
        if not path.is_file():
            raise InputError(f"{what} {path} is not a file")
        if path.stat().st_size > MAX_PEM_BYTES:
            raise InputError(f"{what} {path} is larger than {MAX_PEM_BYTES:,} bytes; is it really a PEM file?")
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror or error}") from error


def check_credentials(chain_pem: bytes, key_pem: bytes, source: str) -> SigningCredentials:
    """Parse and cross-check a chain and key: the key must be the first certificate's, which must be in date."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as error:
        raise InputError(f"{source}: the certificate file holds no readable PEM certificate ({error})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise InputError(f"{source}: the key is encrypted; give an unencrypted PEM key (mode 0600)") from None
    except ValueError as error:
        raise InputError(f"{source}: the key file holds no readable PEM private key ({error})") from None
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*public) != key.public_key().public_bytes(*public):
        raise InputError(f"{source}: the key does not match the certificate (the chain's first certificate)")
    now = datetime.datetime.now(datetime.UTC)
    if not chain[0].not_valid_before_utc <= now <= chain[0].not_valid_after_utc:
        raise InputError(
            f"{source}: the certificate is valid from {chain[0].not_valid_before_utc:%Y-%m-%d} to "
            f"{chain[0].not_valid_after_utc:%Y-%m-%d}, not today"
        )
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return SigningCredentials(chain_pem, pkcs8, _algorithm(key, source), source)


def load_credentials(cert: Path, key: Path) -> SigningCredentials:
    """The user's chain (`--c2pa-cert`) and key (`--c2pa-key`), checked; a key others can read gets a note."""
    source = f"--c2pa-cert {cert} / --c2pa-key {key}"
    credentials = check_credentials(_read_pem(cert, "certificate"), _read_pem(key, "key"), source)
    if _open_to_others(key):
        note = f"--c2pa-key {key} can be read by other users of this machine, who could sign as you; chmod 600 it"
        return dataclasses.replace(credentials, notes=(note,))
    return credentials


def local_authority(folder: Path | None = None) -> SigningCredentials:
    """The local authority's credentials, made on first use (`created` then says so); several processes starting
    at once make one. A signer key others can read is refused: anyone who read it could sign as this authority."""
    folder = folder or config_folder() / AUTHORITY_FOLDER
    created = not folder.exists() and _create_authority(folder)
    source = f"the local signing authority in {folder}"
    key_path = folder / SIGNER_KEY
    try:
        chain_pem, key_pem = (folder / SIGNER_CHAIN).read_bytes(), key_path.read_bytes()
    except OSError as error:
        raise InputError(
            f"{source} cannot be read ({error.strerror or error}); remove the folder to make a new one"
        ) from error
    if _open_to_others(key_path):
        raise InputError(
            f"{key_path} is open to other users of this machine (mode {stat.S_IMODE(key_path.stat().st_mode):04o}), "
            f"who could sign as you; chmod 600 {key_path}"
        )
    try:
        credentials = check_credentials(chain_pem, key_pem, source)
    except InputError as error:
        raise InputError(f"{error}; remove the folder to make a new one") from None
    return dataclasses.replace(credentials, local_authority=folder, created=created)


def _open_to_others(path: Path) -> bool:
    """Whether the group or others have any access to `path`."""
    try:
        return bool(path.stat().st_mode & 0o077)
    except OSError:
        return False


def _make_folders(folder: Path) -> None:
    """`folder` and any missing parents, each made 0700 whatever the umask (as XDG asks of its config home)."""
    missing = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    for path in reversed(missing):
        try:
            path.mkdir(mode=FOLDER_MODE)
        except FileExistsError:  # another process made it meanwhile
            continue
        os.chmod(path, FOLDER_MODE)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """A new file with exactly `mode`, whatever the umask."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), mode)
        file.write(data)


def _create_authority(folder: Path) -> bool:
    """Write a root and a signer it issued into a new folder beside `folder`, then rename it into place; False when
    another process made it first (theirs is used)."""
    from cryptography.hazmat.primitives import serialization

    authority = secrets.token_hex(4)  # tells two users' authorities apart without naming either
    root_key, root = _root_certificate(authority)
    signer_key, signer = _signer_certificate(root_key, root, authority)
    staging = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
    try:
        _make_folders(folder.parent)
        staging.mkdir(mode=FOLDER_MODE)
        os.chmod(staging, FOLDER_MODE)
        pem = serialization.Encoding.PEM
        _write_new(staging / ROOT_CERT, root.public_bytes(pem), CERTIFICATE_MODE)
        _write_new(staging / SIGNER_CHAIN, signer.public_bytes(pem) + root.public_bytes(pem), CERTIFICATE_MODE)
        key_bytes = signer_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        _write_new(staging / SIGNER_KEY, key_bytes, KEY_MODE)
        try:
            os.rename(staging, folder)  # fails if another process made it first: theirs is used
        except OSError:
            if not folder.is_dir():
                raise
            return False
        return True
    except OSError as error:
        raise InputError(
            f"cannot make a local C2PA signing authority in {folder}: {error.strerror or error}; "
            "give --c2pa-cert and --c2pa-key, or --no-c2pa"
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _name(common_name: str, authority: str) -> Any:
    """A certificate name that says what it is and which authority, never who or where (every manifest holds it)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"flux2-split local signing authority {authority}"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _root_certificate(authority: str) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("flux2-split local root", authority)
    identifier = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "encipher_only"), False
    )
    certificate = (
        _validity(x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, decipher_only=False, **usage),
            critical=True,
        )
        .add_extension(identifier, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(identifier), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _signer_certificate(root_key: Any, root: Any, authority: str) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = ec.generate_private_key(ec.SECP256R1())
    root_identifier = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    usage = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "encipher_only"), False
    )
    certificate = (
        _validity(
            x509.CertificateBuilder()
            .subject_name(_name("flux2-split C2PA signer", authority))
            .issuer_name(root.subject)
            .public_key(key.public_key())
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, decipher_only=False, **usage),
            critical=True,
        )
        # c2pa takes emailProtection or documentSigning; its own claim-signing OID alone fails its verify-after-sign
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_identifier), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    return key, certificate


def _validity(builder: Any) -> Any:
    from cryptography import x509

    now = datetime.datetime.now(datetime.UTC)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * VALID_YEARS))
    )
