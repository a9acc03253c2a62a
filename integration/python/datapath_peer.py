"""Small real peers that run inside the test pods (network namespaces).

  http ADDR PORT          HTTP/1.1 server answering "client=IP:PORT path=PATH"
  tcp-echo ADDR PORT      echoes every line back
                          (both servers take an IPv6 ADDR too)
  udp-sink PORT FILE      appends "IP payload" of every datagram to FILE
  sctp-sink PORT FILE     raw IP protocol 132 socket: appends "IP dport" of every
                          SCTP packet to FILE (this kernel has no SCTP stack, so
                          packets are crafted and read raw; the datapath sees
                          real SCTP headers either way)
  udp-send HOST PORT MSG  one datagram
  sctp-send HOST PORT     one SCTP INIT-shaped packet
  lines HOST PORT         a client: stdin lines to HOST:PORT, replies to stdout
"""
import http.server
import socket
import socketserver
import struct
import sys


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def http_server(addr, port):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = f"client={self.client_address[0]}:{self.client_address[1]} path={self.path}\n".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        address_family = family(addr)

        def server_bind(self):
            # HTTPServer looks its own address up (getfqdn) between bind and
            # listen: in a pod without DNS that left it refusing connections
            # for seconds
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = self.server_address[:2]

    Server((addr, int(port)), Handler).serve_forever()


def tcp_echo(addr, port):
    class Echo(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(line)
                self.wfile.flush()

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        address_family = family(addr)

    Server((addr, int(port)), Echo).serve_forever()


def udp_sink(port, path):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(port)))
    while True:
        data, peer = s.recvfrom(65535)
        with open(path, "a") as f:
            f.write(f"{peer[0]} {data.decode(errors='replace')}\n")


def sctp_sink(port, path):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
    while True:
        packet, peer = s.recvfrom(65535)
        ihl = (packet[0] & 0x0F) * 4
        _sport, dport = struct.unpack("!HH", packet[ihl:ihl + 4])
        if dport == int(port):
            with open(path, "a") as f:
                f.write(f"{peer[0]} {dport}\n")


def udp_send(host, port, msg):
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(msg.encode(), (host, int(port)))


def sctp_send(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
    # common header (ports, verification tag 0, checksum) + an INIT chunk
    init = struct.pack("!BBHIIHHI", 1, 0, 20, 0x1234, 65535, 1, 1, 1)
    header = struct.pack("!HHII", 40000, int(port), 0, 0)
    s.sendto(header + init, (host, 0))


def lines(host, port):
    conn = socket.create_connection((host, int(port)), timeout=5)
    reader = conn.makefile("r")
    for line in sys.stdin:
        try:
            conn.sendall(line.encode())
            reply = reader.readline()
        except OSError as e:
            reply = f"error {e}\n"
        sys.stdout.write(reply if reply else "closed\n")
        sys.stdout.flush()


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {
        "http": http_server,
        "tcp-echo": tcp_echo,
        "udp-sink": udp_sink,
        "sctp-sink": sctp_sink,
        "udp-send": udp_send,
        "sctp-send": sctp_send,
        "lines": lines,
    }[command](*args)
