"""A server that pretends to be PostgreSQL, for the TLS tests: it answers the client's SSLRequest with
TLS under a certificate of its own, asks for the password in clear text (as a server may), and appends
whatever password arrives to a file. A client that checks the server's certificate never gets that far.

    python3 impostor.py CERT KEY ADDRESS PORT RECEIVED_FILE      (prints "listening" once it is)
"""
import socket
import ssl
import struct
import sys

SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104
CLEARTEXT_PASSWORD = 3


def exactly(conn, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the client hung up")
        data += chunk
    return data


def message(conn) -> bytes:
    length, = struct.unpack("!i", exactly(conn, 4))
    return exactly(conn, length - 4)


def serve(conn, tls: ssl.SSLContext, received: str) -> None:
    while True:
        body = message(conn)
        code, = struct.unpack("!i", body[:4])
        if code == GSSENC_REQUEST:
            conn.sendall(b"N")
        elif code == SSL_REQUEST:
            conn.sendall(b"S")
            conn = tls.wrap_socket(conn, server_side=True)      # a client that verifies stops here
        else:
            break                                               # the startup message
    conn.sendall(b"R" + struct.pack("!ii", 8, CLEARTEXT_PASSWORD))
    if exactly(conn, 1) == b"p":
        password = message(conn).rstrip(b"\0").decode(errors="replace")
        with open(received, "a") as f:
            f.write(password + "\n")
    conn.close()


def main(cert: str, key: str, address: str, port: str, received: str) -> None:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = socket.create_server((address, int(port)))
    print("listening", flush=True)
    while True:
        conn, _ = server.accept()
        try:
            serve(conn, tls, received)
        except (OSError, ConnectionError, ssl.SSLError):
            pass


if __name__ == "__main__":
    main(*sys.argv[1:])
