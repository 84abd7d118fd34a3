"""A private CrowdSec Local API for tests: Debian's ``crowdsec`` 1.4.6 started with its own config, SQLite database and
loopback port, LAPI only, and never allowed to reach the network (no CAPI, no console, no hub download, no metrics).

``/etc/crowdsec`` (the package's config) is only read (``profiles.yaml``), never modified, and the system service is
never started. :func:`start_lapi` returns a :class:`LocalLapi` with ``cscli`` helpers to register bouncers and machines,
add and delete decisions and read alerts and decisions back; the ``crowdsec_lapi`` fixture in conftest.py owns one per
session and ``lapi`` hands each test a fresh bouncer on an emptied engine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CROWDSEC = "/usr/bin/crowdsec"
CSCLI = "/usr/bin/cscli"
PACKAGE_PROFILES = Path("/etc/crowdsec/profiles.yaml")
# The Debian package's offline hub (README.Debian): read-only here, nothing is ever downloaded.
OFFLINE_HUB = Path("/usr/share/crowdsec/hub")
PLUGIN_DIR = Path("/usr/lib/crowdsec/plugins")
INSTALL_HINT = (
    "CrowdSec is not installed: as root, create a non-empty /etc/crowdsec/online_api_credentials.yaml "
    "(e.g. '# no thanks', so the package does not register with the real CAPI), then `apt-get install crowdsec`"
)
STARTUP_DEADLINE = 90.0
CSCLI_TIMEOUT = 60.0
# Belt and braces: any proxied (non-loopback) request a Go binary might try goes to a closed loopback port. Go never
# proxies loopback addresses, so cscli still reaches the private LAPI.
_NO_NETWORK_ENV = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost,::1",
    "no_proxy": "127.0.0.1,localhost,::1",
}


class LapiUnavailable(RuntimeError):
    """The private LAPI could not be started (crowdsec missing, or it did not answer in time)."""


def crowdsec_installed() -> bool:
    """True when both Debian binaries are present and executable."""
    return all(os.access(path, os.X_OK) for path in (CROWDSEC, CSCLI))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class LapiCerts:
    """A test PKI for a TLS LAPI: a CA, the server's certificate (127.0.0.1), a bouncer client certificate (OU
    ``bouncer-ou``, which LAPI accepts as a bouncer) and a stranger's (OU ``other-ou``, refused), all PEM files."""

    ca: Path
    server: Path
    server_key: Path
    bouncer: Path
    bouncer_key: Path
    stranger: Path
    stranger_key: Path
    agent: Path | None = None  # a watcher's client certificate (OU agent-ou, which LAPI accepts as a machine)
    agent_key: Path | None = None


def make_lapi_certs(directory: Path) -> LapiCerts:
    """Generate :class:`LapiCerts` under ``directory`` (needs ``cryptography``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cscapi test LAPI CA")])

    def builder(subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca = builder(ca_name, ca_key.public_key()).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True
    )
    ca_cert = ca.sign(ca_key, hashes.SHA256())

    def write(name: str, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path

    def leaf(name: str, cn: str, ou: str | None, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if ou:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
        b = builder(x509.Name(attrs), key.public_key())
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return write(name, b.sign(ca_key, hashes.SHA256()), key)

    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server, server_key = leaf("server", "127.0.0.1", None, True)
    bouncer, bouncer_key = leaf("bouncer", "cscapi-bouncer", "bouncer-ou", False)
    stranger, stranger_key = leaf("stranger", "stranger", "other-ou", False)
    agent, agent_key = leaf("agent", "cscapi-watcher", "agent-ou", False)
    return LapiCerts(ca_path, server, server_key, bouncer, bouncer_key, stranger, stranger_key, agent, agent_key)


def _tls_yaml(certs: LapiCerts | None) -> str:
    if certs is None:
        return ""
    return f"""\
    tls:
      cert_file: {certs.server}
      key_file: {certs.server_key}
      ca_cert_path: {certs.ca}
      client_verification: VerifyClientCertIfGiven
      bouncers_allowed_ou:
        - bouncer-ou
      agents_allowed_ou:
        - agent-ou
"""


def _config_yaml(root: Path, port: int, certs: LapiCerts | None = None) -> str:
    """The private engine's config.yaml: every path under ``root``, no ``online_client`` section (no CAPI
    credentials: the engine cannot talk to CAPI even without ``-no-capi``), prometheus off, logs to a file."""
    return f"""\
common:
  daemonize: false
  log_media: file
  log_level: info
  log_dir: {root}/log/
  working_dir: {root}
config_paths:
  config_dir: {root}/config/
  data_dir: {root}/data/
  simulation_path: {root}/config/simulation.yaml
  hub_dir: {OFFLINE_HUB}/
  index_path: {OFFLINE_HUB}/.index.json
  notification_dir: {root}/config/notifications/
  plugin_dir: {PLUGIN_DIR}/
crowdsec_service:
  acquisition_path: {root}/config/acquis.yaml
  parser_routines: 1
cscli:
  output: human
  color: "no"
db_config:
  log_level: info
  type: sqlite
  db_path: {root}/data/crowdsec.db
  use_wal: true
  flush:
    max_items: 100000
    max_age: 7d
api:
  client:
    insecure_skip_verify: {"true" if certs else "false"}
    credentials_path: {root}/config/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:{port}
{_tls_yaml(certs)}    profiles_path: {root}/config/profiles.yaml
    console_path: {root}/config/console.yaml
    trusted_ips:
      - 127.0.0.1
      - ::1
prometheus:
  enabled: false
  level: full
  listen_addr: 127.0.0.1
  listen_port: 0
"""


def check_offline(config_text: str) -> None:
    """Refuse a config that could reach the network: CAPI credentials, console, or a non-loopback listener."""
    forbidden = ("online_client", "online_api_credentials", "console_path: /etc", "hub.crowdsec.net")
    for word in forbidden:
        if word in config_text:
            raise LapiUnavailable(f"refusing a private LAPI config that mentions {word!r}")
    if "listen_uri: 127.0.0.1:" not in config_text:
        raise LapiUnavailable("refusing a private LAPI config that does not listen on 127.0.0.1 only")


@dataclass
class LocalLapi:
    """A running private LAPI and the cscli helpers that drive it (cscli always gets ``-c`` our config)."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    config: Path
    log_file: Path
    certs: LapiCerts | None = None
    _bouncers: int = field(default=0)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/``, or ``https://`` when the engine serves TLS (``certs``)."""
        return f"{'https' if self.certs else 'http'}://127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(_NO_NETWORK_ENV)
        env["HOME"] = str(self.root / "home")
        return env

    def cscli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``cscli -c <private config> ARGS``; raise with its output when it fails and ``check``."""
        done = subprocess.run(
            [CSCLI, "-c", str(self.config), "--color", "no", *args],
            capture_output=True,
            text=True,
            timeout=CSCLI_TIMEOUT,
            env=self.env(),
            cwd=self.root,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"cscli {' '.join(args)} failed ({done.returncode}): {done.stderr or done.stdout}")
        return done

    # registrations
    def add_bouncer(self, name: str | None = None) -> str:
        """Register a bouncer and return its API key (``cscli bouncers add NAME -o raw``)."""
        self._bouncers += 1
        name = name or f"bouncer-{self._bouncers}-{secrets.token_hex(3)}"
        key = self.cscli("bouncers", "add", name, "-o", "raw").stdout.strip()
        if not key or any(c.isspace() for c in key):
            raise AssertionError(f"cscli bouncers add printed no key: {key!r}")
        return key

    def delete_bouncer(self, name: str) -> None:
        self.cscli("bouncers", "delete", name)

    def add_machine(self, name: str, password: str | None = None) -> tuple[str, str]:
        """Register a (validated) machine and return ``(machine_id, password)``; the credentials file goes under
        our root, never to /etc/crowdsec (cscli's default for ``-f``)."""
        password = password or secrets.token_urlsafe(24)
        creds = self.root / "config" / f"machine-{name}.yaml"
        self.cscli("machines", "add", name, "--password", password, "-f", str(creds), "--force", "-u", self.base_url)
        return name, password

    # decisions
    def add_decision(
        self,
        *,
        ip: str | None = None,
        range: str | None = None,
        scope: str | None = None,
        value: str | None = None,
        type: str = "ban",
        duration: str = "4h",
        reason: str | None = None,
    ) -> None:
        """``cscli decisions add`` with exactly one of ``ip``, ``range`` or ``scope``+``value``."""
        args = ["decisions", "add", "--type", type, "--duration", duration]
        if ip is not None:
            args += ["--ip", ip]
        elif range is not None:
            args += ["--range", range]
        elif scope is not None and value is not None:
            args += ["--scope", scope, "--value", value]
        else:
            raise ValueError("add_decision needs ip=, range= or scope= and value=")
        if reason is not None:
            args += ["--reason", reason]
        self.cscli(*args)

    def import_decisions(self, path: Path, *, duration: str = "4h", type: str = "ban") -> None:
        """``cscli decisions import -i PATH``: 1.4.6 reads ``.csv`` (a ``value`` header, then one value a line;
        optional columns duration, scope, type, reason) or ``.json`` (a list of such objects)."""
        self.cscli("decisions", "import", "-i", str(path), "--duration", duration, "--type", type)

    def delete_decisions(
        self,
        *,
        ip: str | None = None,
        range: str | None = None,
        type: str | None = None,
        decision_id: int | None = None,
        everything: bool = False,
    ) -> None:
        """``cscli decisions delete`` by ip, range, type, id, or ``--all``."""
        args = ["decisions", "delete"]
        if everything:
            args.append("--all")
        if ip is not None:
            args += ["--ip", ip]
        if range is not None:
            args += ["--range", range]
        if type is not None:
            args += ["--type", type]
        if decision_id is not None:
            args += ["--id", str(decision_id)]
        if len(args) == 2:
            raise ValueError("delete_decisions needs a filter or everything=True")
        self.cscli(*args)

    def delete_alerts(self) -> None:
        """``cscli alerts delete --all``: every alert (and so every decision) goes; a deleted decision's alert
        outlives ``delete_decisions``, and a later test reading alerts back would see it."""
        self.cscli("alerts", "delete", "--all")

    def decisions(self) -> list[dict[str, Any]]:
        """``cscli decisions list -o json``: the alerts carrying active decisions (cscli's own shape)."""
        return self._json("decisions", "list", "-o", "json")

    def alerts(self) -> list[dict[str, Any]]:
        """``cscli alerts list -o json``."""
        return self._json("alerts", "list", "-o", "json")

    def _json(self, *args: str) -> list[dict[str, Any]]:
        out = self.cscli(*args).stdout.strip()
        if not out or out == "null":
            return []
        data = json.loads(out)
        return list(data) if isinstance(data, list) else [data]

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the engine we started (by its own process handle) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


def _answers(port: int, certs: LapiCerts | None = None) -> bool:
    """True once the LAPI answers HTTP (403 for an unknown key is an answer)."""
    scheme = "https" if certs else "http"
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/v1/decisions", headers={"X-Api-Key": "probe"})
    handlers: list[Any] = [urllib.request.ProxyHandler({})]
    if certs is not None:
        import ssl

        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(certs.ca))))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def start_lapi(root: Path, *, certs: LapiCerts | None = None) -> LocalLapi:
    """Start a private LAPI under ``root`` and wait until it answers; raise :class:`LapiUnavailable` otherwise.
    With ``certs`` it serves TLS and accepts bouncer client certificates (OU ``bouncer-ou``); cscli talks to it
    over loopback without verifying (``insecure_skip_verify``)."""
    if not crowdsec_installed():
        raise LapiUnavailable(INSTALL_HINT)
    for sub in ("config", "data", "log", "home", "config/notifications"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    config_dir = root / "config"
    if PACKAGE_PROFILES.is_file():
        shutil.copyfile(PACKAGE_PROFILES, config_dir / "profiles.yaml")
    else:  # the package's default profile, in case /etc/crowdsec lacks it
        (config_dir / "profiles.yaml").write_text(
            'name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == "Ip"\n'
            "decisions:\n - type: ban\n   duration: 4h\non_success: break\n"
        )
    (config_dir / "simulation.yaml").write_text("simulation: off\nexclusions: []\n")
    (config_dir / "acquis.yaml").write_text("")
    last_error = "no attempt"
    for _attempt in range(3):  # a port taken between _free_port and the bind: retry on another one
        port = _free_port()
        text = _config_yaml(root, port, certs)
        check_offline(text)
        config = config_dir / "config.yaml"
        config.write_text(text)
        log_file = root / "log" / "crowdsec.log"
        stdout = (root / "log" / "stdout.log").open("ab")
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(_NO_NETWORK_ENV)
        env["HOME"] = str(root / "home")
        try:
            process = subprocess.Popen(
                [CROWDSEC, "-c", str(config), "-no-cs", "-no-capi"],
                stdout=stdout,
                stderr=subprocess.STDOUT,
                cwd=root,
                env=env,
                start_new_session=True,
            )
        finally:
            stdout.close()
        lapi = LocalLapi(root=root, port=port, process=process, config=config, log_file=log_file, certs=certs)
        deadline = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < deadline and lapi.alive():
            if _answers(port, certs):
                # cscli's own machine (decisions add/delete log in as a machine), credentials under root.
                creds = str(config_dir / "local_api_credentials.yaml")
                lapi.cscli("machines", "add", "cscli-tests", "--auto", "-f", creds, "-u", lapi.base_url)
                return lapi
            time.sleep(0.1)
        last_error = (
            f"exit code {process.poll()}; log: {lapi.log_tail()} {(root / 'log' / 'stdout.log').read_text()[-2000:]}"
        )
        lapi.stop()
    raise LapiUnavailable(f"the private CrowdSec LAPI did not answer within {STARTUP_DEADLINE:.0f}s ({last_error})")


# ---- a tiny MaxMind DB writer (country databases for the GeoIP tests) -------------------------------------------


def _mmdb_field(value: Any) -> bytes:
    """One data-section field (maps, UTF-8 strings, unsigned ints, arrays) in the MaxMind DB encoding."""

    def head(kind: int, size: int) -> bytes:
        if size < 29:
            size_bits, extra = size, b""
        elif size < 285:
            size_bits, extra = 29, bytes([size - 29])
        else:
            size_bits, extra = 30, (size - 285).to_bytes(2, "big")
        if kind <= 7:
            return bytes([(kind << 5) | size_bits]) + extra
        return bytes([size_bits, kind - 7]) + extra

    if isinstance(value, dict):
        return head(7, len(value)) + b"".join(_mmdb_field(str(k)) + _mmdb_field(v) for k, v in value.items())
    if isinstance(value, list):
        return head(11, len(value)) + b"".join(_mmdb_field(v) for v in value)
    if isinstance(value, str):
        raw = value.encode()
        return head(2, len(raw)) + raw
    if isinstance(value, int):
        raw = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big") if value else b""
        return head(6 if value < 2**32 else 9, len(raw)) + raw
    raise TypeError(type(value).__name__)


def write_country_mmdb(path: Path, countries: dict[str, str], *, record_size: int = 24) -> Path:
    """Write an IPv6 MaxMind DB mapping each network (``"192.0.2.0/24"``, ``"2001:db8::/32"``) to a country code,
    in GeoLite2-Country's shape (``{"country": {"iso_code": ...}}``); IPv4 networks live at ``::/96`` and are aliased
    at ``::ffff:0:0/96`` as MaxMind's files do. ``record_size`` 24, 28 or 32."""
    import ipaddress

    nodes: list[list[Any]] = [[None, None]]  # each child: None (empty), ("node", i) or ("data", code)

    def insert(bits: int, prefix: int, code: str) -> None:
        node = 0
        for depth in range(prefix):
            bit = (bits >> (127 - depth)) & 1
            if depth == prefix - 1:
                nodes[node][bit] = ("data", code)
                return
            child = nodes[node][bit]
            if child is None or child[0] == "data":
                nodes.append([child, child])  # split a data leaf: both halves keep it
                child = ("node", len(nodes) - 1)
                nodes[node][bit] = child
            node = child[1]

    for text, code in countries.items():
        net = ipaddress.ip_network(text)
        if net.version == 4:
            insert(int(net.network_address), 96 + net.prefixlen, code)
        else:
            insert(int(net.network_address), net.prefixlen, code)
    # alias ::ffff:0:0/96 to the ::/96 subtree (80 zero bits, then 16 one bits)
    node = 0
    for _ in range(96):
        child = nodes[node][0]
        if child is None or child[0] != "node":
            break
        node = child[1]
    v4_root = ("node", node)
    node = 0
    for depth in range(95):
        bit = 0 if depth < 80 else 1
        child = nodes[node][bit]
        if child is None:
            nodes.append([None, None])
            child = ("node", len(nodes) - 1)
            nodes[node][bit] = child
        node = child[1]
    nodes[node][1] = v4_root

    node_count = len(nodes)
    data = b""
    offsets: dict[str, int] = {}
    for code in sorted(set(countries.values())):
        offsets[code] = len(data)
        data += _mmdb_field({"country": {"iso_code": code, "names": {"en": code}}})

    def record(child: Any) -> int:
        if child is None:
            return node_count
        if child[0] == "node":
            return int(child[1])
        return node_count + 16 + offsets[child[1]]

    tree = bytearray()
    for left, right in nodes:
        a, b = record(left), record(right)
        if record_size == 24:
            tree += a.to_bytes(3, "big") + b.to_bytes(3, "big")
        elif record_size == 28:
            tree += (a & 0xFFFFFF).to_bytes(3, "big") + bytes([((a >> 24) << 4) | (b >> 24)])
            tree += (b & 0xFFFFFF).to_bytes(3, "big")
        else:
            tree += a.to_bytes(4, "big") + b.to_bytes(4, "big")
    metadata = {
        "node_count": node_count,
        "record_size": record_size,
        "ip_version": 6,
        "database_type": "cscapi-test-Country",
        "languages": ["en"],
        "binary_format_major_version": 2,
        "binary_format_minor_version": 0,
        "build_epoch": 1700000000,
        "description": {"en": "cscapi test country database"},
    }
    path.write_bytes(bytes(tree) + b"\0" * 16 + data + b"\xab\xcd\xefMaxMind.com" + _mmdb_field(metadata))
    return path
