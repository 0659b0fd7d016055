package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestDataExportStreamed: a plugin holding more key-value data than one
// control message carries (about 47 MiB after base64) is exported in
// chunks and imported back in chunks; the one-message export refuses it
// and says to use the streamed one.
func TestDataExportStreamed(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, pluginDir(t, testplugManifest("bulk", nil, hooks("request", "GET", "/b/:id", "2s", "fail-open", 0))))
	kv := td.store.KV("bulk")
	const keys, size = 55, 1000 << 10 // 55 values of 1000 KiB: 53.7 MiB
	values := make([][]byte, keys)
	for i := range values {
		values[i] = make([]byte, size)
		rand.Read(values[i])
		if err := kv.Set(fmt.Sprintf("blob/%02d", i), values[i]); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if _, err := td.ctl.ExportData(ctx, "bulk"); err == nil || !strings.Contains(err.Error(), "use a newer dimplugctl, which streams it") {
		t.Fatalf("one-message export of %d MiB: %v", keys*size>>20, err)
	}
	var doc bytes.Buffer
	n, k, err := td.ctl.ExportDataStream(ctx, "bulk", &doc)
	if err != nil {
		t.Fatal(err)
	}
	if k != keys || n != uint64(doc.Len()) || n < keys*size*4/3 {
		t.Fatalf("streamed export: %d bytes (%d received), %d keys", n, doc.Len(), k)
	}
	t.Logf("streamed export: %d keys, %.1f MiB", k, float64(n)/(1<<20))

	// Back in, replacing what the plugin has now.
	for i := range values {
		if err := kv.Delete(fmt.Sprintf("blob/%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Set("other", []byte("x")); err != nil {
		t.Fatal(err)
	}
	got, err := td.ctl.ImportDataStream(ctx, "bulk", &doc, true)
	if err != nil || got != keys {
		t.Fatalf("streamed import: %d keys, %v", got, err)
	}
	for i, want := range values {
		v, ok, err := kv.Get(fmt.Sprintf("blob/%02d", i))
		if err != nil || !ok || !bytes.Equal(v, want) {
			t.Fatalf("blob/%02d after the import: %d bytes, %v, %v", i, len(v), ok, err)
		}
	}
	if _, ok, _ := kv.Get("other"); ok {
		t.Error("the replacing import kept a key that was not in the export")
	}
	// A document that is not an export: refused, nothing written.
	if _, err := td.ctl.ImportDataStream(ctx, "bulk", strings.NewReader(`{"format": 1, "plugin": "bulk", "kv": [{"key": "x"}]`), true); err == nil {
		t.Fatal("a broken document was imported")
	}
	if v, ok, _ := kv.Get("blob/00"); !ok || !bytes.Equal(v, values[0]) {
		t.Error("a refused import changed the data")
	}
}
