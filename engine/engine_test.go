package main

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHelmsLogLosesSecretValues(t *testing.T) {
	var out bytes.Buffer
	handler := redactingHandler{inner: slog.NewJSONHandler(&out, nil), secrets: newSecretSet([]string{"hunter22", "31337"})}
	logger := slog.New(handler).With("release", "web-hunter22")
	logger.Warn("upgrade failed for hunter22", "error", errors.New(`port "31337": expected numeric`), "port", 31337,
		slog.Group("object", "name", "hunter22"))
	text := out.String()
	if strings.Contains(text, "hunter22") || strings.Contains(text, "31337") {
		t.Fatalf("a secret value reached the log: %s", text)
	}
	if strings.Count(text, "***") != 5 {
		t.Fatalf("each secret was replaced: %s", text)
	}
}

func TestChartFilesAreReadOnceAndFollowHelmignore(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := writeFile(dir, name, body); err != nil {
			t.Fatal(err)
		}
	}
	write("Chart.yaml", "apiVersion: v2\nname: web\nversion: 1.0.0\n")
	write("values.yaml", "replicas: 1\n")
	write("templates/cm.yaml", "kind: ConfigMap\n")
	write(".helmignore", "secret.txt\n")
	write("secret.txt", "not part of the chart\n")
	cache := newChartCache(2)
	first, err := cache.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range first.Raw {
		if f.Name == "secret.txt" {
			t.Fatal(".helmignore was not applied")
		}
	}
	// Helm edits the chart it is given (dependencies); each load must be a fresh one.
	first.Values["replicas"] = 9
	write("values.yaml", "replicas: 5\n")
	second, err := cache.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if second.Values["replicas"] != float64(1) && second.Values["replicas"] != 1 {
		t.Fatalf("the cached files, freshly parsed: got %v", second.Values["replicas"])
	}
}

// writeFile writes name under dir, creating folders.
func writeFile(dir, name, body string) error {
	path := filepath.Join(dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(body), 0o644)
}

func TestLookedUpSecretsAreRedactedEncodedAndDecoded(t *testing.T) {
	secret := map[string]any{
		"kind": "Secret",
		"data": map[string]any{"token": "Y2FuYXJ5LXZhbHVl", "flag": "b24="},
	}
	list := map[string]any{"kind": "SecretList", "items": []any{secret}}
	secrets := newSecretSet(nil)
	secrets.add(lookedUpSecrets(list)...)
	message := secrets.redact(`fail: read canary-value (Y2FuYXJ5LXZhbHVl), flag on`)
	if strings.Contains(message, "canary-value") || strings.Contains(message, "Y2FuYXJ5LXZhbHVl") {
		t.Fatalf("a looked-up value survived: %s", message)
	}
	if !strings.Contains(message, "flag on") {
		t.Fatalf("values shorter than %d characters are left alone: %s", minLookedUpSecret, message)
	}
	if got := lookedUpSecrets(map[string]any{"kind": "ConfigMap", "data": map[string]any{"a": "Y2FuYXJ5LXZhbHVl"}}); len(got) != 0 {
		t.Fatalf("only Secrets count: %v", got)
	}
}
