"""A real Orthanc with its DICOM server on, the gateway as `tomaat gateway serve` in its own process, and waits.

Holds no tests. The Orthanc is a third one, of the gateway tests' own (its folder .services/orthanc-gateway,
started through scripts/orthanc.sh with TOMAAT_ORTHANC_DICOM_PORT), since CI's two have no DICOM server; it
needs Debian's orthanc installed (scripts/orthanc.sh installs it as root), else the tests that need it skip.
The gateway is declared to it as the modality `tomaat` through its REST API, with the port of each test's
gateway. Like the other Orthancs it is shared and never emptied: every series made here has fresh UIDs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import requests
from browser_support import ROOT, free_port
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

ORTHANC_DIR = os.path.join(ROOT, ".services", "orthanc-gateway")
ORTHANC_AET = "ORTHANC"
GATEWAY_AET = "TOMAAT"
TIMEOUT = 30


def wait_for(condition: Callable[[], object], seconds: float, what: str):
    """condition's first true value, polled until the deadline; AssertionError naming `what` past it."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:g} s")
        time.sleep(0.05)


class Orthanc:
    """The gateway tests' Orthanc: REST root, DICOM port and AE title."""

    def __init__(self):
        if not os.path.exists("/usr/sbin/Orthanc"):
            pytest.skip("Debian's orthanc is not installed (bash scripts/orthanc.sh installs it as root)")
        recorded = os.path.join(ORTHANC_DIR, "dicom-port")
        try:
            self.dicom_port = int(open(recorded).read())
        except (OSError, ValueError):
            self.dicom_port = free_port()
        env = {**os.environ, "TOMAAT_ORTHANC_DIR": ORTHANC_DIR, "TOMAAT_ORTHANC_DICOM_PORT": str(self.dicom_port)}
        env.pop("TOMAAT_ORTHANC_PORT", None)
        done = subprocess.run(
            ["bash", "scripts/orthanc.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        with open(recorded, "w") as handle:
            handle.write(str(self.dicom_port))
        self.dicomweb = done.stdout.strip().splitlines()[-1]
        self.root = self.dicomweb.removesuffix("/dicom-web")
        self.aet = ORTHANC_AET

    def declare(self, name: str, aet: str, port: int) -> None:
        answer = requests.put(
            f"{self.root}/modalities/{name}", json={"AET": aet, "Host": "127.0.0.1", "Port": port}, timeout=TIMEOUT
        )
        assert answer.status_code == 200, answer.text

    def send(self, modality: str, series_id: str, synchronous: bool = True) -> dict:
        """Orthanc sends a series (its Orthanc id) to a declared modality by C-STORE."""
        answer = requests.post(
            f"{self.root}/modalities/{modality}/store",
            json={"Resources": [series_id], "Synchronous": synchronous},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    def series_id(self, instance_id: str) -> str:
        return requests.get(f"{self.root}/instances/{instance_id}", timeout=TIMEOUT).json()["ParentSeries"]

    def study_series(self, study_uid: str) -> list[dict]:
        answer = requests.post(
            f"{self.root}/tools/find",
            json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
            timeout=TIMEOUT,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    def of_modality(self, study_uid: str, modality: str) -> list[dict]:
        return [s for s in self.study_series(study_uid) if s["MainDicomTags"].get("Modality") == modality]

    def instance_files(self, series: dict) -> list[bytes]:
        return [requests.get(f"{self.root}/instances/{i}/file", timeout=TIMEOUT).content for i in series["Instances"]]


def gateway_config(folder, port: int, orthanc: Orthanc | None, rules: list[dict], **extra) -> str:
    """A configuration in `folder` for a gateway on `port` that takes series from Orthanc (and from the tests'
    own sender, which calls itself ORTHANC too); results go back to Orthanc's DICOM port."""
    config = {
        "ae_title": GATEWAY_AET,
        "listen": {"host": "127.0.0.1", "port": port},
        "spool": {"folder": str(folder / "spool"), "max_bytes": 1 << 30},
        "quiet_seconds": 1.0,
        "callers": {ORTHANC_AET: {"host": "127.0.0.1", "port": orthanc.dicom_port if orthanc else 0}},
        "rules": rules,
        "retry": {"attempts": 3, "first_delay": 0.5, "max_delay": 2},
        **extra,
    }
    path = folder / "gateway.json"
    path.write_text(json.dumps(config, indent=1))
    return str(path)


class Gateway:
    """`tomaat gateway serve --config PATH` in its own process, up once it answers C-ECHO."""

    def __init__(self, config: str, folder, ready: Callable[[int], bool] | None = None):
        self.config = config
        self.port = json.load(open(config))["listen"]["port"]
        self.log_path = os.path.join(str(folder), f"gateway-{time.monotonic_ns()}.log")
        self.log = open(self.log_path, "w")
        command = [
            sys.executable,
            "-c",
            "from tomaat.gateway.cli import gateway; gateway()",
            "serve",
            "--config",
            config,
        ]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, "TMPDIR": str(folder)}, stdout=self.log, stderr=subprocess.STDOUT
        )
        ready = ready or echo
        try:
            wait_for(
                lambda: self.process.poll() is not None or ready(self.port), 60, f"the gateway answering on {self.port}"
            )
            assert self.process.poll() is None, self.output()
        except AssertionError:
            self.kill()
            raise

    def output(self) -> str:
        with open(self.log_path) as handle:
            return handle.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=TIMEOUT)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=TIMEOUT)
        self.log.close()
        return self.output()

    def status(self) -> list[dict]:
        command = [
            sys.executable,
            "-c",
            "from tomaat.gateway.cli import gateway; gateway()",
            "status",
            "--config",
            self.config,
            "--json",
        ]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]


def echo(port: int, calling: str = ORTHANC_AET) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AET)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return getattr(status, "Status", None) == 0


def associate(port: int, calling: str = ORTHANC_AET):
    """A C-STORE association of the tests' own sender (a modality) with the gateway."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title=GATEWAY_AET)


class Relay:
    """A loopback TCP relay to `target`, on a port that refuses connections until start(): a destination that is
    down, then back."""

    def __init__(self, target: int):
        self.target, self.port = target, free_port()
        self.listener: socket.socket | None = None

    def start(self) -> None:
        import threading

        self.listener = socket.create_server(("127.0.0.1", self.port))

        def pump(a, b):
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def accept():
            while True:
                try:
                    client, _ = self.listener.accept()
                except OSError:
                    return
                server = socket.create_connection(("127.0.0.1", self.target))
                threading.Thread(target=pump, args=(client, server), daemon=True).start()
                threading.Thread(target=pump, args=(server, client), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()


def authority(folder, name: str) -> dict[str, str]:
    """A CA of the tests' own and one certificate it issued for 127.0.0.1 (server and client use): PEM paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def made(subject, issuer, public_key, signer, ca: bool):
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )  # fmt: skip
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
            usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = made(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    cert = made(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), ca_name, key.public_key(), ca_key, False)
    paths = {k: str(folder / f"{name}-{k}.pem") for k in ("ca", "certificate", "key")}
    for what, data in (
        ("ca", ca.public_bytes(serialization.Encoding.PEM)),
        ("certificate", cert.public_bytes(serialization.Encoding.PEM)),
        (
            "key",
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        ),
    ):
        with open(paths[what], "wb") as handle:
            handle.write(data)
    return paths


def tls_echo(port: int, pem: dict[str, str] | None, trust: str, calling: str = ORTHANC_AET) -> bool:
    """C-ECHO over TLS, showing `pem`'s certificate (none when None) and trusting the CA at `trust`."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=trust)
    if pem:
        context.load_cert_chain(pem["certificate"], pem["key"])
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AET, tls_args=(context, "127.0.0.1"))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return getattr(status, "Status", None) == 0
