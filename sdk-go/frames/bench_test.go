package frames

import (
	"context"
	"io"
	"sync"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// BenchmarkConnRoundTrip sends a frame message and waits for an echo (a
// pass-through plugin's answer): two packets per op.
func BenchmarkConnRoundTrip(b *testing.B) {
	for _, bc := range []struct {
		name   string
		inline int // 0: a ref
	}{{"ref", 0}, {"inline-4K", 4 << 10}, {"inline-64K", 64 << 10}} {
		b.Run(bc.name, func(b *testing.B) {
			a, peer := pair(b)
			payload := make([]byte, bc.inline)
			var wg sync.WaitGroup
			wg.Go(func() { // the echo; ends at EOF when a closes
				for {
					msg, m, _, err := peer.Recv()
					if err != nil {
						if err != io.EOF {
							b.Error(err)
						}
						return
					}
					f, _ := m.Frame()
					err = peer.Send(func(r schema.FrameMsg) error { return r.SetFrame(f) })
					msg.Release()
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.SetBytes(int64(bc.inline))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				err := a.Send(func(m schema.FrameMsg) error {
					f, err := m.NewFrame()
					if err != nil {
						return err
					}
					f.SetStream(1)
					f.SetSeq(uint64(i))
					f.SetKeyFrame(true)
					if err := f.SetContentType("video/iso.segment"); err != nil {
						return err
					}
					if bc.inline > 0 {
						return f.Data().SetInline(payload)
					}
					r, err := f.Data().NewRef()
					r.SetPool(1)
					r.SetOffset(uint64(i) * 64)
					r.SetLength(1 << 20)
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
				msg, _, _, err := a.Recv()
				if err != nil {
					b.Fatal(err)
				}
				msg.Release()
			}
			a.Close()
			wg.Wait()
		})
	}
}

func BenchmarkAllocFree(b *testing.B) {
	b.Run("one", func(b *testing.B) {
		a := newAlloc(b, 64<<20, nil)
		b.ReportAllocs()
		for b.Loop() {
			s, _ := a.Alloc(context.Background(), 1<<20)
			if err := a.Free(s.Pool, s.Off, s.Len); err != nil {
				b.Fatal(err)
			}
		}
	})
	// A window of 32 live slots of varied sizes, freed oldest first.
	b.Run("window-32", func(b *testing.B) {
		a := newAlloc(b, 64<<20, nil)
		var ring [32]Slot
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			r := &ring[i%len(ring)]
			if r.Len > 0 {
				if err := a.Free(r.Pool, r.Off, r.Len); err != nil {
					b.Fatal(err)
				}
			}
			s, err := a.Alloc(context.Background(), int64(4<<10+(i*7919)%(1<<20)))
			if err != nil {
				b.Fatal(err)
			}
			*r = s
		}
	})
	b.Run("dedicated-8M", func(b *testing.B) {
		a := newAlloc(b, 1<<20, nil)
		b.ReportAllocs()
		for b.Loop() {
			s, err := a.Alloc(context.Background(), 8<<20)
			if err != nil {
				b.Fatal(err)
			}
			if err := a.Free(s.Pool, s.Off, s.Len); err != nil {
				b.Fatal(err)
			}
		}
	})
}
