"""The layer's CA bundle check (layers/deps/Makefile, check_ca_bundle.py) means what it says: a
build for DbTlsMode=verify ships an Amazon RDS root CA (by subject, as in the RDS global bundle),
not just any PEM (the system trust store used to pass); DB_TLS_MODE=off|required builds without a
bundle.  Certificates are generated here (the real bundle needs the network); refusals are one line."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.unit.deploy_model import ROOT

LAYER = ROOT / "layers" / "deps"
SYSTEM_STORE = Path("/etc/ssl/certs/ca-certificates.crt")


def ca_certificate(common_name: str, unit: str = "Amazon RDS", issuer: tuple[str, str] | None = None) -> str:
    """A CA certificate (PEM) with the RDS bundle's subject layout; self-signed unless ``issuer``
    (common name, unit) names another (an intermediate, as the 2019 regional CAs are)."""
    key = ec.generate_private_key(ec.SECP256R1())

    def name(cn: str, ou: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon Web Services, Inc."),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name(common_name, unit))
        .issuer_name(name(*issuer) if issuer else name(common_name, unit))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def make(target: str, tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """The layer Makefile's ``target`` as sam build runs it (its own folder, the caller's environment
    minus this repository's CA settings)."""
    env = {
        k: v
        for k, v in os.environ.items()
        # MAKEFLAGS and MAKELEVEL: under `make test` the build would be a sub-make ("make[1]: ...").
        if k
        not in (
            "OUTBOX_RDS_CA_BUNDLE",
            "OUTBOX_CA_ANY_ISSUER",
            "DB_TLS_MODE",
            "MAKEFLAGS",
            "MAKELEVEL",
            "MFLAGS",
        )
    }
    args = [f"{k}={v}" for k, v in {"ARTIFACTS_DIR": str(tmp_path / "artifacts"), **variables}.items()]
    return subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(LAYER), target, *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def our_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The build's own message lines (make's "*** Error" trailer aside)."""
    return [line for line in result.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]


def bundle(tmp_path: Path, *pems: str) -> Path:
    path = tmp_path / "bundle.pem"
    path.write_text("".join(pems))
    return path


def no_default_bundle() -> None:
    if (LAYER / "certs" / "rds-global-bundle.pem").exists():
        pytest.skip(
            "layers/deps/certs/rds-global-bundle.pem exists here (make fetch-rds-ca): it would be used"
        )


RDS_ROOTS = [
    "Amazon RDS eu-west-1 Root CA RSA2048 G1",
    "Amazon RDS Root 2019 CA",
    "Amazon RDS eu-south-1 Root CA",
]


@pytest.mark.parametrize("root", RDS_ROOTS)
def test_a_bundle_of_amazon_rds_cas_is_accepted_and_shipped(tmp_path: Path, root: str) -> None:
    intermediate = ca_certificate(
        "Amazon RDS ca-central-1 2019 CA", issuer=("Amazon RDS Root 2019 CA", "Amazon RDS")
    )
    path = bundle(tmp_path, ca_certificate(root), intermediate)
    result = make("ship-ca-bundle", tmp_path, OUTBOX_RDS_CA_BUNDLE=str(path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "artifacts" / "certs" / "rds-global-bundle.pem").read_bytes() == path.read_bytes()


@pytest.mark.skipif(not SYSTEM_STORE.is_file(), reason="no system trust store at /etc/ssl/certs")
def test_the_system_trust_store_is_refused_with_one_line(tmp_path: Path) -> None:
    result = make("ship-ca-bundle", tmp_path, OUTBOX_RDS_CA_BUNDLE=str(SYSTEM_STORE))
    assert result.returncode != 0
    (line,) = our_lines(result)
    assert line.startswith(f"outbox-relay layer: {SYSTEM_STORE} holds ") and "not Amazon RDS CAs" in line, (
        line
    )
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize(
    ("pems", "reason"),
    [
        # Someone else's CA, however well-formed.
        ([("Example Corp Root CA", "Example PKI")], "not Amazon RDS CAs"),
        # An RDS root with a public CA appended: the public CA would vouch for the database too.
        (
            [("Amazon RDS eu-west-1 Root CA RSA2048 G1", "Amazon RDS"), ("Amazon Root CA 1", "")],
            "not Amazon RDS CAs",
        ),
        # RDS-named but not a root (an intermediate alone cannot anchor the chain).
        ([("Amazon RDS ca-central-1 2019 CA", "Amazon RDS")], "no Amazon RDS root CA"),
        # The right name under the wrong unit.
        ([("Amazon RDS eu-west-1 Root CA RSA2048 G1", "Totally RDS")], "not Amazon RDS CAs"),
    ],
)
def test_a_bundle_that_is_not_the_rds_bundle_is_refused_with_one_line(
    tmp_path: Path, pems: list[tuple[str, str]], reason: str
) -> None:
    path = bundle(tmp_path, *(ca_certificate(cn, ou or "Amazon") for cn, ou in pems))
    result = make("ship-ca-bundle", tmp_path, OUTBOX_RDS_CA_BUNDLE=str(path))
    assert result.returncode != 0
    (line,) = our_lines(result)
    assert line.startswith(f"outbox-relay layer: {path} ") and reason in line, line
    assert "make fetch-rds-ca" in line
    assert not (tmp_path / "artifacts").exists()


def test_text_that_is_no_pem_is_refused_with_one_line(tmp_path: Path) -> None:
    path = bundle(tmp_path, "<html>Access Denied</html>\n")
    result = make("check-ca-bundle", tmp_path, OUTBOX_RDS_CA_BUNDLE=str(path))
    assert result.returncode != 0
    assert our_lines(result) == [
        f"outbox-relay layer: {path} is not a PEM CA bundle: fetch it with 'make fetch-rds-ca' or point "
        "OUTBOX_RDS_CA_BUNDLE at the RDS global-bundle.pem"
    ]


def test_local_builds_may_ship_another_ca_when_they_say_so(tmp_path: Path) -> None:
    path = bundle(tmp_path, ca_certificate("outbox-relay local CA", "local"))
    assert make("ship-ca-bundle", tmp_path, OUTBOX_RDS_CA_BUNDLE=str(path)).returncode != 0
    result = make("ship-ca-bundle", tmp_path, OUTBOX_RDS_CA_BUNDLE=str(path), OUTBOX_CA_ANY_ISSUER="1")
    assert result.returncode == 0, result.stderr
    # Still a PEM check.
    junk = bundle(tmp_path, "junk\n")
    assert (
        make("check-ca-bundle", tmp_path, OUTBOX_RDS_CA_BUNDLE=str(junk), OUTBOX_CA_ANY_ISSUER="1").returncode
        != 0
    )


def test_verify_without_a_bundle_is_refused_with_one_line(tmp_path: Path) -> None:
    no_default_bundle()
    result = make("ship-ca-bundle", tmp_path)
    assert result.returncode != 0
    (line,) = our_lines(result)
    assert line.startswith(
        "outbox-relay layer: no RDS CA bundle at layers/deps/certs/rds-global-bundle.pem: "
        "run 'make fetch-rds-ca'"
    )


@pytest.mark.parametrize("mode", ["off", "required"])
def test_off_and_required_build_without_a_bundle(tmp_path: Path, mode: str) -> None:
    no_default_bundle()
    result = make("ship-ca-bundle", tmp_path, DB_TLS_MODE=mode)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "artifacts" / "certs").exists()
    # What build-DepsLayer runs first is this check (the pip install is not run here).
    plan = make("build-DepsLayer", tmp_path, DB_TLS_MODE=mode, PYTHON="false")
    assert plan.returncode != 0 and "outbox-relay layer" not in plan.stderr, plan.stderr


def test_an_unknown_tls_mode_is_refused_with_one_line(tmp_path: Path) -> None:
    result = make("check-ca-bundle", tmp_path, DB_TLS_MODE="verify-full")
    assert our_lines(result) == [
        "outbox-relay layer: DB_TLS_MODE=verify-full is not off, required or verify (the stack's DbTlsMode)"
    ]
