#!/usr/bin/env python3
"""Writes the hand-made seeds (seed-*) into agent/fuzz/corpus/: valid frame
streams in both directions and passwd/group files. Fuzzer-found inputs sit
beside them under their hashes. The first byte of a frame seed is the chunk
size the decoder is fed with."""
import json, os, struct

def frame(kind, stream, payload):
    return struct.pack('<BBHII', 1, kind, 0, stream, len(payload)) + payload

def ctl(obj):
    return frame(1, 0, json.dumps(obj).encode())

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus')
start = {"type": "start", "id": 1, "process": 1, "spec": {
    "process": {"args": ["sh", "-c", "echo hi"], "env": ["A=b"], "cwd": "/", "user": "alice:wheel",
                "additional_gids": [5], "rlimits": [{"resource": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}],
                "tty": True, "tty_size": [24, 80], "stdin": True},
    "root": {"source": {"block": {"device": "/dev/vda", "fstype": "ext4"}}, "scratch": None},
    "hostname": "web", "hosts": [{"address": "10.0.0.9", "names": ["db"]}],
    "dns": {"nameservers": ["1.1.1.1"], "search": ["local"]},
    "network": {"interface": "eth0", "address": "10.0.0.2/24", "gateway": "10.0.0.1", "mtu": 1400},
    "exit_ack_timeout_ms": 0}}
seeds = {
    'frames_to_agent': {
        'start': bytes([7]) + ctl(start),
        'exec-signal-resize': bytes([255]) + ctl({"type": "exec", "id": 2, "process": 2, "spec": {"args": ["ls"]}})
        + ctl({"type": "signal", "id": 3, "process": 1, "signal": 15}) + ctl({"type": "resize", "id": 4, "process": 1, "rows": 40, "cols": 100})
        + ctl({"type": "ack_exit", "process": 1}) + ctl({"type": "shutdown", "id": 5}),
        'stdin-data-eof': bytes([3]) + frame(2, (1 << 2) | 0, b'hello\n' * 100) + frame(2, (1 << 2) | 0, b''),
        'credit': bytes([1]) + frame(3, (1 << 2) | 1, struct.pack('<I', 65536)),
    },
    'frames_from_agent': {
        'hello-reply-exit': bytes([5]) + ctl({"type": "hello", "protocol": 1, "agent_version": "0.1.0", "boot_to_connected_us": 1234})
        + ctl({"type": "reply", "id": 1, "result": {"Ok": None}})
        + ctl({"type": "reply", "id": 2, "result": {"Err": {"kind": "not_found", "message": "x: not found"}}})
        + ctl({"type": "exited", "process": 1, "status": {"code": 7}}) + ctl({"type": "exited", "process": 2, "status": {"signal": 9}}),
        'output': bytes([64]) + frame(2, (1 << 2) | 1, b'out' * 1000) + frame(2, (1 << 2) | 2, b'err') + frame(2, (1 << 2) | 1, b'')
        + frame(3, (1 << 2) | 0, struct.pack('<I', 300000)),
        'fatal': bytes([1]) + ctl({"type": "fatal", "message": "bad"}),
    },
}
pw = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:A:/home/alice:/bin/sh\nbad:x:-1:0::/:/bin/sh\n"
gr = "root:x:0:\nwheel:x:10:alice,bob\n"
seeds['passwd_files'] = {'basic': (pw + "\0" + gr + "\0alice:wheel").encode(), 'numeric': (pw + "\0" + gr + "\0" + "1234:5678").encode()}
for target, files in seeds.items():
    os.makedirs(os.path.join(out, target), exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(out, target, 'seed-' + name), 'wb') as f:
            f.write(data)
