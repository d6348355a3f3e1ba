#!/usr/bin/env python3
"""Seed the fuzz corpus: one file per DLM message found in the captures (classic pcap,
Ethernet/IPv4/TCP, port 21064, per-direction reassembly by sequence number), plus the
hex vectors of the wire spec. Each seed starts with one byte that tells the fuzz target
how to split the input into chunks."""
import hashlib, os, struct, sys

out, captures = sys.argv[1], sys.argv[2]
seeds = []

def frames(stream):
    o = 0
    while o + 16 <= len(stream):
        n = struct.unpack_from('<H', stream, o + 12)[0]
        if n < 16 or o + n > len(stream):
            break
        yield stream[o:o + n]
        o += n

for root, _, files in os.walk(captures):
    for f in files:
        if not f.endswith('.pcap'):
            continue
        data = open(os.path.join(root, f), 'rb').read()
        streams = {}
        o = 24
        while o + 16 <= len(data):
            incl = struct.unpack_from('<I', data, o + 8)[0]
            pkt = data[o + 16:o + 16 + incl]
            o += 16 + incl
            if len(pkt) < 54 or pkt[12:14] != b'\x08\x00' or pkt[23] != 6:
                continue
            ihl = (pkt[14] & 15) * 4
            tcp = pkt[14 + ihl:]
            sport, dport, seq = struct.unpack_from('!HHI', tcp, 0)
            if 21064 not in (sport, dport):
                continue
            payload = tcp[(tcp[12] >> 4) * 4:]
            if payload:
                streams.setdefault((pkt[26:30], sport, pkt[30:34], dport), {})[seq] = payload
        for segs in streams.values():
            stream = b''.join(segs[k] for k in sorted(segs))
            for m in frames(stream):
                seeds.append(m)

# wire.md §10.c ACK and §10.d FIN
seeds.append(bytes.fromhex('0200030006000000020000001000040000'))
seeds.append(bytes.fromhex('02000300070000000100000028000300050000000000000002000300000000000100000010000500'))

seen = set()
for i, m in enumerate(seeds):
    key = (m[14], m[16:20] if len(m) >= 20 else b'', len(m) > 4000)
    if key in seen and i % 7:
        continue  # keep the corpus small: a few of each kind
    seen.add(key)
    for split in (0, 7):
        blob = bytes([split]) + m
        name = hashlib.sha1(blob).hexdigest()
        open(os.path.join(out, name), 'wb').write(blob)
print(f"seeded {len(os.listdir(out))} inputs from {len(seeds)} messages")
