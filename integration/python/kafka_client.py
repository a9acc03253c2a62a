"""A real Kafka client (kafka-python) for weir's tests.

usage: kafka_client.py BOOTSTRAP CLIENT_ID COMMAND ARGS...
  produce TOPIC VALUE...       send the values, print one JSON line per value
  produce-idempotent TOPIC VALUE...
                               the same with enable_idempotence (InitProducerId
                               without a transactional id, sequence numbers)
  produce-transactional TOPIC TXID VALUE...
                               one transaction: init, begin, send, commit; one line
  consume TOPIC GROUP COUNT    read COUNT records as member of GROUP, commit
  create-topic TOPIC           CreateTopics through the admin API
  delete-topic TOPIC           DeleteTopics through the admin API
  describe-configs TOPIC       DescribeConfigs of one topic (all keys)
  delete-groups GROUP...       DeleteGroups; the outcome per group

Every outcome, success or Kafka error, is printed as JSON so the test can
assert on the error class the client saw.
"""

import json
import sys

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError


def out(**fields):
    print(json.dumps(fields), flush=True)


def main():
    bootstrap, client_id, command, *args = sys.argv[1:]
    if command == "produce":
        topic, *values = args
        producer = KafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, retries=0, max_block_ms=10000)
        for value in values:
            try:
                meta = producer.send(topic, value.encode()).get(timeout=15)
                out(ok=True, offset=meta.offset)
            except KafkaError as e:
                out(ok=False, error=type(e).__name__, message=str(e))
        producer.close(timeout=5)
    elif command == "produce-idempotent":
        topic, *values = args
        producer = KafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, enable_idempotence=True,
                                 acks="all", max_block_ms=10000)
        for value in values:
            try:
                meta = producer.send(topic, value.encode()).get(timeout=15)
                out(ok=True, offset=meta.offset)
            except KafkaError as e:
                out(ok=False, error=type(e).__name__, message=str(e))
        producer.close(timeout=5)
    elif command == "produce-transactional":
        topic, txid, *values = args
        producer = None
        try:
            producer = KafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, transactional_id=txid,
                                     max_block_ms=10000)
            producer.init_transactions()
            producer.begin_transaction()
            for value in values:
                producer.send(topic, value.encode())
            producer.commit_transaction()
            out(ok=True)
        except Exception as e:
            out(ok=False, error=type(e).__name__, message=str(e))
        if producer is not None:
            producer.close(timeout=5)
    elif command == "consume":
        topic, group, count = args
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            client_id=client_id,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=15000,
        )
        values = []
        try:
            for record in consumer:
                values.append(record.value.decode())
                if len(values) >= int(count):
                    break
            consumer.commit()
            out(ok=True, values=values, committed=consumer.committed(next(iter(consumer.assignment()))))
        except KafkaError as e:
            out(ok=False, error=type(e).__name__, message=str(e), values=values)
        consumer.close()
    elif command == "create-topic":
        (topic,) = args
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id, request_timeout_ms=10000)
        try:
            result = admin.create_topics([NewTopic(topic, 1, 1)])
            errors = [e[1] for e in getattr(result, "topic_errors", [])]
            out(ok=all(code == 0 for code in errors), codes=errors)
        except KafkaError as e:
            out(ok=False, error=type(e).__name__, message=str(e))
        admin.close()
    elif command == "delete-topic":
        (topic,) = args
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id, request_timeout_ms=10000)
        try:
            result = admin.delete_topics([topic])
            errors = [e[1] for e in getattr(result, "topic_error_codes", [])]
            out(ok=all(code == 0 for code in errors), codes=errors)
        except KafkaError as e:
            out(ok=False, error=type(e).__name__, message=str(e))
        admin.close()
    elif command == "describe-configs":
        (topic,) = args
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id, request_timeout_ms=10000)
        try:
            # kafka-python does not raise on a per-resource error code: an
            # answer without configs is what a refusal looks like to it
            result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
            configs = result.get("topic", {}).get(topic, {})
            out(ok=True, keys=sorted(configs))
        except KafkaError as e:
            out(ok=False, error=type(e).__name__, message=str(e))
        admin.close()
    elif command == "delete-groups":
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id, request_timeout_ms=10000)
        try:
            # {group: "OK" or the error class name}
            out(ok=True, results=admin.delete_groups(list(args)))
        except KafkaError as e:
            out(ok=False, error=type(e).__name__, message=str(e))
        admin.close()
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
