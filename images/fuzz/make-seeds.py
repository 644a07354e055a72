#!/usr/bin/env python3
"""Writes the hand-made seeds (seed-*) for the layer_apply target into
images/fuzz/corpus/layer_apply/ (Python's tarfile: someone else's writer)
and for image_json (a manifest, an index, a config)."""
import hashlib, io, json, os, tarfile

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus', 'layer_apply')
os.makedirs(out, exist_ok=True)

def mk(name, entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            add(t, *e)
    with open(os.path.join(out, 'seed-' + name), 'wb') as f:
        f.write(buf.getvalue())

def add(t, name, typ=tarfile.REGTYPE, data=b'', link='', mode=0o644, pax=None):
    i = tarfile.TarInfo(name)
    i.type, i.linkname, i.mode = typ, link, mode
    i.size = len(data) if typ == tarfile.REGTYPE else 0
    if pax:
        i.pax_headers = pax
    t.addfile(i, io.BytesIO(data) if typ == tarfile.REGTYPE else None)

mk('tree', [('etc', tarfile.DIRTYPE, b'', '', 0o755), ('etc/passwd', tarfile.REGTYPE, b'root:x:0:0::/root:/bin/sh\n'),
            ('bin/sh', tarfile.SYMTYPE, b'', 'busybox'), ('bin/busybox', tarfile.REGTYPE, b'\x7fELF'),
            ('bin/ls', tarfile.LNKTYPE, b'', 'bin/busybox'), ('run/fifo', tarfile.FIFOTYPE)])
mk('whiteouts', [('d', tarfile.DIRTYPE, b'', '', 0o755), ('d/.wh..wh..opq',), ('d/new', tarfile.REGTYPE, b'x'), ('.wh.gone',)])
mk('xattr', [('f', tarfile.REGTYPE, b'cap', '', 0o644, {'SCHILY.xattr.user.test': 'v', 'SCHILY.xattr.trusted.x': 'no'})])
mk('symlink-escape', [('evil', tarfile.SYMTYPE, b'', '/tmp'), ('evil/x', tarfile.REGTYPE, b'x')])

jdir = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus', 'image_json')
os.makedirs(jdir, exist_ok=True)
d1, d2 = ('sha256:' + hashlib.sha256(x).hexdigest() for x in (b'a', b'b'))
docs = {
    'manifest': {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d1, "size": 10},
                 "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d2, "size": 20, "annotations": {"a": "b"}}]},
    'index': {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
              "manifests": [{"digest": d1, "size": 1, "platform": {"architecture": "arm64", "os": "linux"}},
                            {"digest": d2, "size": 2, "platform": {"architecture": "amd64", "os": "linux"}}]},
    'config': {"architecture": "amd64", "os": "linux",
               "config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": ["PATH=/bin", "A=b"], "WorkingDir": "/srv",
                          "User": "1000:1000", "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGQUIT"},
               "rootfs": {"type": "layers", "diff_ids": [d1]}},
}
for name, doc in docs.items():
    with open(os.path.join(jdir, 'seed-' + name), 'w') as f:
        json.dump(doc, f)
