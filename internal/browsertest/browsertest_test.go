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
