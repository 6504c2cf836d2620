#!/usr/bin/env python3
"""A Bramble JSON API client with paho-mqtt (Debian's python3-paho-mqtt),
used by tests/automation.rs and usable as an example (docs/automation.md).

usage: automation_paho.py HOST PORT PREFIX COMMANDS_JSON

COMMANDS_JSON is a list of [verb, command] pairs; each command gets a
unique "id" and the reply topic, is published on PREFIX/api/<verb>, and its
reply is awaited. Prints the replies as one JSON list, in order.
"""
import json
import sys
import threading
import uuid

import paho.mqtt.client as mqtt

host, port, prefix, commands = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
reply_to = f"{prefix}/reply/paho-{uuid.uuid4().hex[:8]}"
replies = {}
subscribed = threading.Event()
got = threading.Condition()


def on_connect(client, userdata, flags, rc):
    client.subscribe(reply_to, qos=1)


def on_subscribe(client, userdata, mid, granted_qos):
    subscribed.set()


def on_message(client, userdata, msg):
    try:
        body = json.loads(msg.payload)
    except ValueError:
        return
    with got:
        replies[str(body.get("id"))] = body
        got.notify_all()


client = mqtt.Client(client_id=f"paho-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect(host, port, keepalive=30)
client.loop_start()
if not subscribed.wait(15):
    sys.exit("not subscribed to the reply topic")

out = []
for verb, command in commands:
    cid = uuid.uuid4().hex
    command = dict(command, id=cid, reply_to=reply_to)
    client.publish(f"{prefix}/api/{verb}", json.dumps(command), qos=1)
    with got:
        if not got.wait_for(lambda: cid in replies, timeout=20):
            sys.exit(f"no reply to {verb} {cid}")
        out.append(replies[cid])

client.loop_stop()
client.disconnect()
print(json.dumps(out))
