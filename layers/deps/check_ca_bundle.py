"""Is this file the Amazon RDS CA bundle?  Run by the layer's Makefile before anything is built
(standard library only: whatever python3 runs `sam build`).  Prints one line and exits 1 if not.

    python3 check_ca_bundle.py BUNDLE NAME [--any-issuer]

BUNDLE is read; NAME is how the message names it.  A bundle must load as CA certificates (a
truncated download or a saved error page would fail every run at its first connect), hold at least
one Amazon RDS root CA (a self-signed certificate, OU "Amazon RDS", CN "Amazon RDS ... Root ... CA",
as in https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem), and nothing but Amazon RDS
CAs (the system trust store is not a substitute: any public CA would then vouch for the database).
--any-issuer keeps the first check only: local builds ship the local stack's own CA."""

from __future__ import annotations

import re
import ssl
import sys

# The global bundle's certificates: "Amazon RDS Root 2019 CA", "Amazon RDS eu-west-1 Root CA
# RSA2048 G1", "Amazon RDS eu-south-1 Root CA", ... and the 2019 regional intermediates
# ("Amazon RDS ca-central-1 2019 CA"); all with OU "Amazon RDS".
RDS_UNIT = "Amazon RDS"
RDS_NAME = re.compile(r"Amazon RDS .*")
RDS_ROOT_NAME = re.compile(r"Amazon RDS (.+ )?Root (.+ )?CA( .+)?")
FIX = "fetch it with 'make fetch-rds-ca' or point OUTBOX_RDS_CA_BUNDLE at the RDS global-bundle.pem"

Name = tuple[tuple[tuple[str, str], ...], ...]


def _field(name: Name, key: str) -> str:
    return next((value for rdn in name for k, value in rdn if k == key), "")


def _shown(name: Name) -> str:
    return ", ".join(f"{k}={v}" for rdn in name for k, v in rdn if k in ("commonName", "organizationName"))


def problem(path: str, label: str, any_issuer: bool = False) -> str | None:
    """The one-line reason ``path`` is refused, or None."""
    try:
        certificates = ssl.create_default_context(cafile=path).get_ca_certs()
    except (OSError, ssl.SSLError, ValueError):
        certificates = []
    if not certificates:
        return f"outbox-relay layer: {label} is not a PEM CA bundle: {FIX}"
    if any_issuer:
        return None
    subjects: list[Name] = [c["subject"] for c in certificates]  # type: ignore[misc]
    issuers: list[Name] = [c["issuer"] for c in certificates]  # type: ignore[misc]
    foreign = [
        s
        for s in subjects
        if _field(s, "organizationalUnitName") != RDS_UNIT or not RDS_NAME.fullmatch(_field(s, "commonName"))
    ]
    if foreign:
        return (
            f"outbox-relay layer: {label} holds {len(foreign)} certificate(s) that are not Amazon RDS CAs"
            f" (first: {_shown(foreign[0]) or 'no name'}): {FIX}"
        )
    roots = [
        s
        for s, i in zip(subjects, issuers, strict=True)
        if s == i and RDS_ROOT_NAME.fullmatch(_field(s, "commonName"))
    ]
    if not roots:
        return f"outbox-relay layer: {label} holds no Amazon RDS root CA: {FIX}"
    return None


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--any-issuer"]
    if len(args) != 2:
        print("usage: check_ca_bundle.py BUNDLE NAME [--any-issuer]", file=sys.stderr)
        return 2
    reason = problem(args[0], args[1], any_issuer="--any-issuer" in argv)
    if reason:
        print(reason, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
