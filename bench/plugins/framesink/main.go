// Command framesink is the benchmark's receiving end for the streams
// section's baselines, in a process of its own.
//
//	framesink grpc SOCKET  a gRPC server (bench/internal/framewire) on a
//	                       Unix socket: client-streaming Sink.Send, default
//	                       windows; the only option set is the largest
//	                       message it accepts (gRPC's default, 4 MiB, is
//	                       smaller than the largest frame)
//	framesink raw SOCKET   a raw Unix stream socket: each frame is a 4-byte
//	                       little-endian length and that many bytes, read
//	                       and discarded; the length 0xFFFFFFFF ends a run,
//	                       and the answer is two 8-byte little-endian
//	                       counts: frames and bytes since the last end
//
// It prints "ready" on stdout once it listens.
package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"

	"google.golang.org/grpc"

	"github.com/dimplugd/dimplugd/bench/internal/framewire"
)

// maxFrame is the largest frame either server takes.
const maxFrame = 64 << 20

// EndOfRun is the raw length that ends a run.
const endOfRun = 0xFFFFFFFF

func main() {
	if len(os.Args) != 3 || (os.Args[1] != "grpc" && os.Args[1] != "raw") {
		fmt.Fprintln(os.Stderr, "usage: framesink grpc|raw SOCKET")
		os.Exit(2)
	}
	ln, err := net.Listen("unix", os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "framesink:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	if os.Args[1] == "grpc" {
		s := grpc.NewServer(grpc.MaxRecvMsgSize(maxFrame + 64))
		framewire.Register(s)
		err = s.Serve(ln)
	} else {
		err = serveRaw(ln)
	}
	fmt.Fprintln(os.Stderr, "framesink:", err)
	os.Exit(1)
}

func serveRaw(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			if err := sinkRaw(c); err != nil && err != io.EOF {
				fmt.Fprintln(os.Stderr, "framesink:", err)
			}
		}()
	}
}

func sinkRaw(c net.Conn) error {
	r := bufio.NewReaderSize(c, 64<<10)
	var hdr [4]byte
	var buf []byte
	var frames, bytes uint64
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		n := binary.LittleEndian.Uint32(hdr[:])
		if n == endOfRun {
			var ack [16]byte
			binary.LittleEndian.PutUint64(ack[0:], frames)
			binary.LittleEndian.PutUint64(ack[8:], bytes)
			if _, err := c.Write(ack[:]); err != nil {
				return err
			}
			frames, bytes = 0, 0
			continue
		}
		if n > maxFrame {
			return fmt.Errorf("frame of %d bytes", n)
		}
		if cap(buf) < int(n) {
			buf = make([]byte, n)
		}
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return err
		}
		frames++
		bytes += uint64(n)
	}
}
