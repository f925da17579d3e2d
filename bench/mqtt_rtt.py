"""MQTT 5 request/reply round trips, one at a time (used by bench/mqtt.sh).

    mqtt_rtt.py echo PORT              answers every message on echo/a on its response topic
    mqtt_rtt.py rtt PORT QOS N TOPIC   publishes N messages on TOPIC with a response topic and
                                       times each reply; prints p50 and p99

Both set TCP_NODELAY on their connection. Needs paho-mqtt (pip install paho-mqtt).
"""
import socket
import statistics
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def connect(port, on_message):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def echo(port):
    def answer(c, _u, m):
        to = getattr(m.properties, "ResponseTopic", None)
        if to:
            c.publish(to, m.payload, qos=1)

    c = connect(port, answer)
    c.subscribe("echo/a", qos=1)
    c.loop_forever()


def rtt(port, qos, n, topic):
    got = threading.Event()
    c = connect(port, lambda *_: got.set())
    c.subscribe("rtt/in", qos=1)
    c.loop_start()
    time.sleep(0.5)
    times = []
    for i in range(n):
        p = Properties(PacketTypes.PUBLISH)
        p.ResponseTopic = "rtt/in"
        got.clear()
        t = time.perf_counter()
        c.publish(topic, b"x", qos=qos, properties=p)
        if not got.wait(10):
            sys.exit(f"{topic}: no reply to message {i} within 10 s")
        times.append((time.perf_counter() - t) * 1000)
    times = sorted(times[5:])  # the first few warm the path
    p99 = times[max(0, int(len(times) * 0.99) - 1)]
    print(f"{topic:8} QoS {qos}: {len(times)} round trips, p50 {statistics.median(times):.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(int(sys.argv[2]))
    else:
        rtt(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
