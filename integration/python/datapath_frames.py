"""Raw frames from inside a test pod (scapy), and a sniffer that logs what a
pod actually receives. For the datapath hardening tests.

  sniff FILE                 log every IPv4 packet arriving on eth0, one line
                             each: "tcp SRC:SPORT > DST:DPORT FLAGS [PAYLOAD]",
                             "udp SRC:SPORT > DST:DPORT PAYLOAD",
                             "icmp SRC > DST TYPE ID PAYLOAD", "ip SRC > DST PROTO PAYLOAD"
  qinq SRC DST DPORT MSG     UDP in two 802.1Q tags with VLAN ID 0 (QinQ)
  qinq-ad SRC DST DPORT MSG  UDP in an 802.1ad tag and an 802.1Q tag, ID 0
  vlan SRC DST DPORT MSG     UDP in one 802.1Q tag, ID 0
  ethertype TYPE             a frame of that ethertype (hex), 64 bytes
  ipv6 DST6                  an IPv6 UDP packet
  syn SPORT DST DPORT        a TCP SYN from this pod's address
  tcp SPORT DST DPORT FLAGS MSG  a TCP segment with these flags (scapy letters)
  proto DST NUMBER MSG       an IPv4 packet of that protocol (47: GRE)
  udp SPORT DST DPORT MSG    a UDP datagram from this pod's address
  udp-flood DST DPORT FIRST N [ROUNDS]
                             N datagrams from source ports FIRST.. (new
                             flows), ROUNDS times over
  icmp DST TYPE ID MSG       an ICMP message (8: echo request, 0: echo reply,
                             13: timestamp, 3: unreachable) from this pod
  icmp-error DST ISRC IDST ISPORT IDPORT MSG [OFFSET]
                             port unreachable to DST quoting a UDP packet
                             ISRC:ISPORT > IDST:IDPORT (a fragment at OFFSET
                             units of 8 bytes, if given)
  frag-tail DST DPORT ID     the second fragment of a UDP datagram whose first
                             fragment was never sent
  frag-part DST DPORT ID MSG first|rest
                             the first fragment, or the others, of a UDP
                             datagram carrying MSG (the same bytes each time)
  frag-datagrams DST DPORT FIRST_ID N TAG
                             N whole UDP datagrams in two fragments each, ids
                             FIRST_ID.., payloads "TAG-I-" and padding
  frag-heads DST DPORT FIRST_ID N
                             N first fragments whose datagrams never finish
  hold HOST PORT SPORT       connect from SPORT to HOST:PORT and keep it open
  multi "CMD ARGS" ...       several of the senders above in one process, in
                             order (scapy takes seconds to start)
"""
import os
import socket
import struct
import sys
import time

# scapy is slow to import; only the senders need it
GATEWAY = "169.254.1.1"


def my_address():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((GATEWAY, 9))
    return s.getsockname()[0]


def send(frame):
    from scapy.all import sendp

    sendp(frame, iface="eth0", verbose=False)


def ether():
    from scapy.all import Ether, getmacbyip

    mac = getmacbyip(GATEWAY)
    if mac is None:
        raise SystemExit("no ARP answer from the node")
    return Ether(dst=mac)


def udp_packet(src, dst, dport, msg, sport=40000):
    from scapy.all import IP, UDP

    return IP(src=src, dst=dst) / UDP(sport=sport, dport=int(dport)) / msg.encode()


def sniff(path):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    s.bind(("eth0", 0))
    with open(path, "a", buffering=1) as out:
        while True:
            frame, (_ifname, _proto, pkttype, _hatype, _addr) = s.recvfrom(65535)
            if pkttype == socket.PACKET_OUTGOING or len(frame) < 34:
                continue
            if struct.unpack("!H", frame[12:14])[0] != 0x0800:
                out.write(f"ethertype {frame[12:14].hex()}\n")
                continue
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            proto = ip[9]
            src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
            frag = struct.unpack("!H", ip[6:8])[0]
            l4 = ip[ihl:]
            if frag & 0x1FFF:
                out.write(f"fragment {src} > {dst} {proto} offset {(frag & 0x1FFF) * 8}\n")
            elif proto == 6 and len(l4) >= 20:
                sport, dport = struct.unpack("!HH", l4[:4])
                flags = l4[13]
                names = "".join(n for bit, n in [(2, "S"), (16, "A"), (1, "F"), (4, "R"), (8, "P")] if flags & bit)
                data = l4[(l4[12] >> 4) * 4:]
                out.write(f"tcp {src}:{sport} > {dst}:{dport} {names} {data.decode(errors='replace')}\n")
            elif proto == 17 and len(l4) >= 8:
                sport, dport = struct.unpack("!HH", l4[:4])
                out.write(f"udp {src}:{sport} > {dst}:{dport} {l4[8:].decode(errors='replace')}\n")
            elif proto == 1 and len(l4) >= 8:
                icmp_type, _code, _sum, ident = struct.unpack("!BBHH", l4[:6])
                out.write(f"icmp {src} > {dst} {icmp_type} {ident} {l4[8:].decode(errors='replace')}\n")
            else:
                out.write(f"ip {src} > {dst} {proto} {l4.decode(errors='replace')}\n")


def qinq(src, dst, dport, msg, outer=0x8100):
    from scapy.all import Dot1AD, Dot1Q

    outer_tag = Dot1AD(vlan=0) if outer == 0x88A8 else Dot1Q(vlan=0)
    send(ether() / outer_tag / Dot1Q(vlan=0) / udp_packet(src, dst, dport, msg))


def vlan(src, dst, dport, msg):
    from scapy.all import Dot1Q

    send(ether() / Dot1Q(vlan=0) / udp_packet(src, dst, dport, msg))


def ethertype(kind):
    from scapy.all import Raw

    frame = ether()
    frame.type = int(kind, 16)
    send(frame / Raw(b"\x00" * 50))


def ipv6(dst6):
    from scapy.all import UDP, IPv6

    send(ether() / IPv6(src="fd00::10", dst=dst6) / UDP(sport=40000, dport=9001) / b"six")


def syn(sport, dst, dport):
    from scapy.all import IP, TCP

    send(ether() / IP(src=my_address(), dst=dst) / TCP(sport=int(sport), dport=int(dport), flags="S", seq=1000))


def tcp(sport, dst, dport, flags, msg):
    from scapy.all import IP, TCP

    segment = TCP(sport=int(sport), dport=int(dport), flags=flags, seq=1000, ack=2000)
    send(ether() / IP(src=my_address(), dst=dst) / segment / msg.encode())


def proto(dst, number, msg):
    from scapy.all import IP

    send(ether() / IP(src=my_address(), dst=dst, proto=int(number)) / msg.encode())


def udp(sport, dst, dport, msg):
    send(ether() / udp_packet(my_address(), dst, dport, msg, sport=int(sport)))


def udp_flood(dst, dport, first, n, rounds="1"):
    from scapy.all import sendp

    base = ether()
    me = my_address()
    ports = range(int(first), int(first) + int(n))
    for r in range(int(rounds)):
        frames = [base / udp_packet(me, dst, dport, f"flood-{r}-{p}", sport=p) for p in ports]
        sendp(frames, iface="eth0", verbose=False, inter=0.002)


def icmp(dst, kind, ident, msg):
    from scapy.all import ICMP, IP

    send(ether() / IP(src=my_address(), dst=dst) / ICMP(type=int(kind), id=int(ident), seq=1) / msg.encode())


def icmp_error(dst, inner_src, inner_dst, inner_sport, inner_dport, msg, offset="0"):
    from scapy.all import ICMP, IP, UDP

    quoted = IP(src=inner_src, dst=inner_dst, frag=int(offset)) / UDP(sport=int(inner_sport), dport=int(inner_dport))
    send(ether() / IP(src=my_address(), dst=dst) / ICMP(type=3, code=3) / quoted / msg.encode())


def frag_tail(dst, dport, ident):
    from scapy.all import IP

    # offset 8 bytes x 3 = 24: past the UDP header, as a second fragment is
    send(ether() / IP(src=my_address(), dst=dst, id=int(ident), proto=17, frag=3, flags=0) / (b"tail" * 10))


def udp_fragments(me, dst, dport, ident, msg):
    from scapy.all import IP, UDP, fragment

    packet = IP(src=me, dst=dst, id=int(ident)) / UDP(sport=40000, dport=int(dport)) / msg.encode()
    # 64 bytes of IP payload per fragment
    return fragment(packet, fragsize=64)


def frag_part(dst, dport, ident, msg, part):
    frames = [ether() / f for f in udp_fragments(my_address(), dst, dport, ident, msg)]
    send(frames[:1] if part == "first" else frames[1:])


def frag_datagrams(dst, dport, first, n, tag):
    from scapy.all import sendp

    base, me = ether(), my_address()
    frames = []
    for i in range(int(n)):
        msg = f"{tag}-{i}-".ljust(100, "x")
        frames += [base / f for f in udp_fragments(me, dst, dport, int(first) + i, msg)]
    # paced: the receiving pod's UDP socket must not overflow
    sendp(frames, iface="eth0", verbose=False, inter=0.0002)


def frag_heads(dst, dport, first, n):
    from scapy.all import IP, UDP, sendp

    base, me = ether(), my_address()
    frames = [
        base / IP(src=me, dst=dst, id=(int(first) + i) % 65536, flags="MF") / UDP(sport=40001, dport=int(dport))
        / (b"h" * 56)
        for i in range(int(n))
    ]
    sendp(frames, iface="eth0", verbose=False)


def hold(host, port, sport):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sport)))
    s.connect((host, int(port)))
    s.sendall(b"hello\n")
    print("connected", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    handlers = {
        "sniff": sniff,
        "qinq": qinq,
        "qinq-ad": lambda *a: qinq(*a, outer=0x88A8),
        "vlan": vlan,
        "ethertype": ethertype,
        "ipv6": ipv6,
        "syn": syn,
        "tcp": tcp,
        "proto": proto,
        "udp": udp,
        "udp-flood": udp_flood,
        "icmp": icmp,
        "icmp-error": icmp_error,
        "frag-tail": frag_tail,
        "frag-part": frag_part,
        "frag-datagrams": frag_datagrams,
        "frag-heads": frag_heads,
        "hold": hold,
    }
    if command == "multi":
        for line in args:
            words = line.split(" ")
            handlers[words[0]](*words[1:])
    else:
        handlers[command](*args)
    sys.stdout.flush()
    os._exit(0)
