package browsertest_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/dimplugd/dimplugd/internal/browsertest"
)

func TestStartAndScreenshot(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, `<!doctype html><title>bt</title><p id="x">hello</p>`)
	}))
	defer srv.Close()

	ctx := browsertest.Start(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL), chromedp.WaitVisible(chromedp.ID("x"))); err != nil {
		t.Fatal(err)
	}
	text, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("x")))
	if err != nil || text != "hello" {
		t.Fatalf("text = %q, %v", text, err)
	}
	path := browsertest.Screenshot(t, ctx, "hello page")
	t.Logf("screenshot: %s", path)
	b, err := os.ReadFile(path)
	if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Fatalf("screenshot %s is not a PNG: %v", path, err)
	}
}

// TestTextWhileRerendering reads an element that the page replaces every
// millisecond, as the console's live table does: Text must never fail with
// a stale node, and a selector that matches nothing is reported as such.
func TestTextWhileRerendering(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, `<!doctype html><table><tbody id="b"></tbody></table><script>
let n = 0;
setInterval(() => { document.getElementById("b").innerHTML = '<tr data-p="a\'b"><td>running</td></tr>'; n++; }, 1);
</script>`)
	}))
	defer srv.Close()

	ctx := browsertest.Start(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL), chromedp.WaitReady(chromedp.CSS(`tbody tr td`))); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		text, found, err := browsertest.Text(ctx, `tr[data-p="a'b"] td`)
		if err != nil || !found || text != "running" {
			t.Fatalf("read %d: %q, %v, %v; want running", i, text, found, err)
		}
	}
	if text, found, err := browsertest.Text(ctx, `#missing`); err != nil || found || text != "" {
		t.Fatalf("missing element: %q, %v, %v; want not found", text, found, err)
	}
}
