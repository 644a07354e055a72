#!/usr/bin/env python3
"""Writes the hand-made seeds (seed-*) for the layer_apply target into
images/fuzz/corpus/layer_apply/ (Python's tarfile: someone else's writer)."""
import io, os, tarfile

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
