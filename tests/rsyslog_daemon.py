"""Debian's rsyslogd in the foreground on loopback, for the SIEM tests: imtcp on a free
port (TLS with rsyslog-gnutls when asked), every message's raw text to a file."""

from __future__ import annotations

import datetime
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .support import free_port, skip_or_fail, stop_process

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
#: rsyslog-gnutls's TLS driver, in the machine's multiarch folder
GTLS = [*Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so"), *Path("/usr/lib/rsyslog").glob(
    "lmnsd_gtls.so")]


def require_rsyslogd(*, tls: bool = False) -> None:
    if not Path(RSYSLOGD).exists():
        skip_or_fail("rsyslogd is not installed (Debian package rsyslog)")
    if tls and not GTLS:
        skip_or_fail("rsyslog's TLS driver is not installed (Debian package rsyslog-gnutls)")


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def make_certs(folder: Path, name: str = "localhost") -> Certs:
    """A CA and a certificate it signed, for `name` and 127.0.0.1: a server's, and a client's
    too (the tests present it as the client certificate)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelfence test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = Certs(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return out


@dataclass
class Rsyslog:
    folder: Path
    certs: Certs | None = None
    client_certs: bool = False  # with certs: only clients whose certificate the CA signed
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def output(self) -> Path:
        return self.folder / "messages.log"

    def _config(self) -> str:
        tls = ""
        imtcp = 'module(load="imtcp")'
        if self.certs is not None:
            c = self.certs
            tls = (f'global(DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{c.ca}"'
                   f' DefaultNetstreamDriverCertFile="{c.cert}"'
                   f' DefaultNetstreamDriverKeyFile="{c.key}")\n')
            mode = "x509/certvalid" if self.client_certs else "anon"
            imtcp = ('module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" '
                     f'StreamDriver.Authmode="{mode}")')
        return (f'global(workDirectory="{self.folder}" maxMessageSize="64k")\n{tls}{imtcp}\n'
                f'input(type="imtcp" port="{self.port}" address="127.0.0.1")\n'
                'template(name="raw" type="string" string="%rawmsg%\\n")\n'
                f'*.* action(type="omfile" file="{self.output}" template="raw")\n')

    def start(self) -> Rsyslog:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "rsyslog.conf"
        conf.write_text(self._config())
        with (self.folder / "rsyslogd.out").open("ab") as log:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.folder / "rsyslogd.pid")],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("rsyslogd did not listen: " + (
                        self.folder / "rsyslogd.out").read_text()[-2000:]) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def lines(self) -> list[str]:
        if not self.output.exists():
            return []
        return [line for line in self.output.read_text().splitlines() if line]

    def wait_lines(self, n: int, timeout_s: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while len(got := self.lines()) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"rsyslogd wrote {len(got)} messages of {n}")
            time.sleep(0.02)
        return got
