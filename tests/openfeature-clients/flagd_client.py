"""An OpenFeature client with the flagd provider in in-process mode, for
Vane's end-to-end tests.

It streams flag configurations from a flagd.sync.v1 FlagSyncService (Vane's
control server), evaluates flags locally and reports on stdout, one JSON
object a line, flushed:

  {"event": "ready"}                          the provider became READY
  {"event": "stale", "message": ...}          the sync stream was lost
  {"event": "error", "message": ...}          not reconnected in the grace period
  {"event": "configuration-changed", "flags": [...]}
  {"event": "values", "values": [{"flag", "value", "variant", "reason", "error"}]}

"values" comes after the first "ready", whenever any result differs from
the last one printed; the flags are evaluated every 100 ms. Numbers are
printed as JavaScript prints them (1.0 as 1), so both clients print the same
line for the same result. It exits on SIGTERM or when stdin closes.

Usage: flagd_client.py --host H --port P --selector GROUP [--tls-ca FILE
           [--tls-cert FILE --tls-key FILE]] [--grace-seconds N]
           [--deadline-ms N] --eval JSON
where JSON is a list of
  {"flag": KEY, "type": "boolean|string|number|object", "default": V, "context": {...}}
and "context" may hold "targetingKey".
"""

import argparse
import json
import os
import signal
import sys
import threading

import grpc
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent

TYPES = ("boolean", "string", "number", "object")
OUT_LOCK = threading.Lock()


def emit(obj):
    with OUT_LOCK:
        sys.stdout.write(json.dumps(plain(obj), separators=(",", ":")) + "\n")
        sys.stdout.flush()


def plain(value):
    """JSON-ready value: enums by their value, integral floats as integers."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return getattr(value, "value", value)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--selector", required=True, help="the Vane group")
    parser.add_argument("--tls-ca", help="PEM file of the CA that signed the server")
    parser.add_argument(
        "--tls-cert", help="PEM file of a client certificate (mTLS, with --tls-key)"
    )
    parser.add_argument("--tls-key", help="PEM file of the client certificate's key")
    parser.add_argument(
        "--grace-seconds",
        type=int,
        help="seconds from stale to error (the provider's default is 10)",
    )
    parser.add_argument(
        "--deadline-ms",
        type=int,
        help="how long initialization waits for the first configuration",
    )
    parser.add_argument("--eval", required=True, help="JSON list of evaluations")
    args = parser.parse_args(argv)
    if args.tls_ca is not None and not os.path.isfile(args.tls_ca):
        parser.error(f"--tls-ca: no such file: {args.tls_ca}")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key: give both or neither")
    if args.tls_cert is not None and args.tls_ca is None:
        parser.error("--tls-cert: needs --tls-ca")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not os.path.isfile(path):
            parser.error(f"{flag}: no such file: {path}")
    try:
        entries = json.loads(args.eval)
    except json.JSONDecodeError as e:
        parser.error(f"--eval: not JSON: {e}")
    if not isinstance(entries, list):
        parser.error("--eval: must be a JSON list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("flag"), str):
            parser.error(f"--eval[{i}].flag: must be a string")
        if entry.get("type") not in TYPES:
            parser.error(f"--eval[{i}].type: must be one of {', '.join(TYPES)}")
        if "default" not in entry:
            parser.error(f"--eval[{i}].default: missing")
        if not isinstance(entry.get("context", {}), dict):
            parser.error(f"--eval[{i}].context: must be an object")
    return args, entries


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def context_of(entry):
    attributes = dict(entry.get("context", {}))
    targeting_key = attributes.pop("targetingKey", None)
    return EvaluationContext(targeting_key=targeting_key, attributes=attributes)


def evaluate(client, entry):
    kind, flag, default = entry["type"], entry["flag"], entry["default"]
    ctx = context_of(entry)
    if kind == "boolean":
        details = client.get_boolean_details(flag, default, ctx)
    elif kind == "string":
        details = client.get_string_details(flag, default, ctx)
    elif kind == "number":
        details = client.get_float_details(flag, float(default), ctx)
    else:
        details = client.get_object_details(flag, default, ctx)
    return {
        "flag": flag,
        "value": details.value,
        "variant": details.variant,
        "reason": details.reason,
        "error": details.error_code,
    }


def main(argv):
    args, entries = parse_args(argv)
    stop = threading.Event()
    ready = threading.Event()

    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch_stdin():
        while sys.stdin.readline():
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()

    def on_ready(_details):
        emit({"event": "ready"})
        ready.set()

    def on_stale(details):
        emit({"event": "stale", "message": details.message})

    def on_error(details):
        emit({"event": "error", "message": details.message})

    def on_changed(details):
        emit(
            {
                "event": "configuration-changed",
                "flags": sorted(details.flags_changed or []),
            }
        )

    options = {
        "host": args.host,
        "port": args.port,
        "selector": args.selector,
        "resolver_type": ResolverType.IN_PROCESS,
        "tls": args.tls_ca is not None,
        "cert_path": args.tls_ca,
    }
    if args.tls_cert is not None:
        # A client certificate: the provider takes it as channel credentials.
        options["channel_credentials"] = grpc.ssl_channel_credentials(
            root_certificates=read_bytes(args.tls_ca),
            private_key=read_bytes(args.tls_key),
            certificate_chain=read_bytes(args.tls_cert),
        )
    if args.grace_seconds is not None:
        options["retry_grace_period"] = args.grace_seconds
    if args.deadline_ms is not None:
        options["deadline_ms"] = args.deadline_ms
    # Initialization runs in the SDK's own thread; READY arrives as an event.
    # Handlers go on after the provider: a handler added while the default
    # no-op provider is in place would see that provider's READY at once.
    api.set_provider(FlagdProvider(**options))
    api.add_handler(ProviderEvent.PROVIDER_READY, on_ready)
    api.add_handler(ProviderEvent.PROVIDER_STALE, on_stale)
    api.add_handler(ProviderEvent.PROVIDER_ERROR, on_error)
    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_changed)
    client = api.get_client()

    last = None
    while not stop.is_set():
        if ready.is_set():
            values = plain([evaluate(client, entry) for entry in entries])
            if values != last:
                emit({"event": "values", "values": values})
                last = values
        stop.wait(0.1)
    api.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
