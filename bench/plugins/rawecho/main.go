// Command rawecho is the benchmark's raw baseline: a Unix-socket server that
// answers each length-prefixed request with a response of the size the
// request asks for, and nothing else.
//
// A request is a 4-byte little-endian payload length, a 4-byte response
// length and the payload; the answer is a 4-byte length and that many
// bytes. Usage: rawecho SOCKET. It prints "ready" on stdout once it listens.
package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: rawecho SOCKET")
		os.Exit(2)
	}
	ln, err := net.Listen("unix", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "rawecho:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "rawecho:", err)
			os.Exit(1)
		}
		go serve(c)
	}
}

func serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 64<<10)
	var hdr [8]byte
	var payload, out []byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := binary.LittleEndian.Uint32(hdr[0:4])
		m := binary.LittleEndian.Uint32(hdr[4:8])
		if n > 16<<20 || m > 16<<20 {
			return
		}
		if cap(payload) < int(n) {
			payload = make([]byte, n)
		}
		if _, err := io.ReadFull(r, payload[:n]); err != nil {
			return
		}
		if cap(out) < int(m)+4 {
			out = make([]byte, m+4)
		}
		out = out[:m+4]
		binary.LittleEndian.PutUint32(out, m)
		copy(out[4:], payload[:n]) // echo what fits
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}
