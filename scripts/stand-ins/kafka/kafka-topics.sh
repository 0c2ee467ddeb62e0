#!/opt/venv/bin/python
"""kafka-topics.sh of the kafka stand-in image: --list, and --create [--if-not-exists] with
--topic, --partitions and --replication-factor, through --bootstrap-server; like Kafka's own
tool it exits non-zero on any failure."""
import argparse
import sys

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

parser = argparse.ArgumentParser(prog="kafka-topics.sh")
parser.add_argument("--bootstrap-server", required=True)
action = parser.add_mutually_exclusive_group(required=True)
action.add_argument("--create", action="store_true")
action.add_argument("--list", action="store_true")
parser.add_argument("--topic")
parser.add_argument("--partitions", type=int, default=1)
parser.add_argument("--replication-factor", type=int, default=1)
parser.add_argument("--if-not-exists", action="store_true")
args = parser.parse_args()

admin = AdminClient({"bootstrap.servers": args.bootstrap_server})
if args.list:
    for name in sorted(admin.list_topics(timeout=10).topics):
        print(name)
    sys.exit(0)
if not args.topic:
    parser.error("--create needs --topic")
new = NewTopic(args.topic, num_partitions=args.partitions, replication_factor=args.replication_factor)
try:
    admin.create_topics([new], operation_timeout=10)[args.topic].result(timeout=30)
    print(f"Created topic {args.topic}.")
except KafkaException as e:
    if e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS and args.if_not_exists:
        sys.exit(0)
    print(f"Error while executing topic command : {e}", file=sys.stderr)
    sys.exit(1)
