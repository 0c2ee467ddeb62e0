#!/opt/venv/bin/python
"""kafka-console-producer.sh of the kafka stand-in image: one record per line of stdin to
--topic through --bootstrap-server; `--property parse.key=true` and `--property
key.separator=S` (default a tab) split each line into key and value as Kafka's tool does.
Exits non-zero when any record is not acknowledged."""
import argparse
import sys

from confluent_kafka import Producer

parser = argparse.ArgumentParser(prog="kafka-console-producer.sh")
parser.add_argument("--bootstrap-server", required=True)
parser.add_argument("--topic", required=True)
parser.add_argument("--property", action="append", default=[])
args = parser.parse_args()

props = {}
for prop in args.property:
    name, sep, value = prop.partition("=")
    if not sep or name not in ("parse.key", "key.separator"):
        parser.error(f"unsupported --property {prop} (parse.key and key.separator only)")
    props[name] = value
parse_key = props.get("parse.key", "false") == "true"
separator = props.get("key.separator", "\t")

failed = []
producer = Producer({"bootstrap.servers": args.bootstrap_server, "enable.idempotence": True})
for line in sys.stdin:
    line = line.rstrip("\n")
    key = None
    if parse_key:
        if separator not in line:
            print(f"No key separator found on line: {line}", file=sys.stderr)
            sys.exit(1)
        key, line = line.split(separator, 1)
    producer.produce(args.topic, value=line.encode(), key=None if key is None else key.encode(),
                     on_delivery=lambda err, _msg: err and failed.append(err))
    producer.poll(0)
if producer.flush(30) or failed:
    print(f"not delivered: {failed or 'timed out'}", file=sys.stderr)
    sys.exit(1)
