package main

import (
	"context"
	"encoding/base64"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"
)

// minLookedUpSecret is the shortest looked-up Secret value redacted: shorter ones ("true", a
// port) would blank out unrelated words of a message.
const minLookedUpSecret = 4

// secretSet is what no reply or log line of one request may repeat: the values the operator
// sends (from valuesFrom Secrets), and those of every Secret the chart's templates looked up.
type secretSet struct {
	mu     sync.Mutex
	values []string
}

func newSecretSet(values []string) *secretSet {
	s := &secretSet{}
	s.add(values...)
	return s
}

// add remembers values, longest first so that a value containing another is replaced whole.
func (s *secretSet) add(values ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[string]bool, len(s.values))
	for _, v := range s.values {
		seen[v] = true
	}
	for _, v := range values {
		if v != "" && !seen[v] {
			s.values = append(s.values, v)
			seen[v] = true
		}
	}
	sort.SliceStable(s.values, func(i, j int) bool { return len(s.values[i]) > len(s.values[j]) })
}

func (s *secretSet) redact(text string) string {
	if s == nil {
		return text
	}
	s.mu.Lock()
	values := s.values
	s.mu.Unlock()
	return redact(text, values)
}

// lookedUpSecrets are the values of a Secret (or of each Secret of a list) that Helm's lookup
// returned: base64 as stored and decoded, and stringData.
func lookedUpSecrets(object map[string]any) []string {
	var values []string
	if items, ok := object["items"].([]any); ok {
		for _, item := range items {
			if o, ok := item.(map[string]any); ok {
				values = append(values, lookedUpSecrets(o)...)
			}
		}
	}
	if object["kind"] != "Secret" {
		return values
	}
	keep := func(v string) {
		if len(v) >= minLookedUpSecret {
			values = append(values, v)
		}
	}
	if data, ok := object["data"].(map[string]any); ok {
		for _, v := range data {
			encoded, _ := v.(string)
			keep(encoded)
			if decoded, err := base64.StdEncoding.DecodeString(encoded); err == nil && utf8.Valid(decoded) {
				keep(string(decoded))
			}
		}
	}
	if data, ok := object["stringData"].(map[string]any); ok {
		for _, v := range data {
			text, _ := v.(string)
			keep(text)
		}
	}
	return values
}

// redact replaces each secret value (longest first, as the operator sends them) with ***.
func redact(text string, secrets []string) string {
	for _, secret := range secrets {
		if secret != "" {
			text = strings.ReplaceAll(text, secret, "***")
		}
	}
	return text
}

// redactingHandler is a log handler that replaces secret values in messages and attributes.
type redactingHandler struct {
	inner   slog.Handler
	secrets *secretSet
}

func (h redactingHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

func (h redactingHandler) Handle(ctx context.Context, record slog.Record) error {
	out := slog.NewRecord(record.Time, record.Level, h.secrets.redact(record.Message), record.PC)
	record.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.attr(a))
		return true
	})
	return h.inner.Handle(ctx, out)
}

func (h redactingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	clean := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		clean[i] = h.attr(a)
	}
	return redactingHandler{inner: h.inner.WithAttrs(clean), secrets: h.secrets}
}

func (h redactingHandler) WithGroup(name string) slog.Handler {
	return redactingHandler{inner: h.inner.WithGroup(name), secrets: h.secrets}
}

// attr redacts one attribute, whatever its kind: a secret may be a long number.
func (h redactingHandler) attr(a slog.Attr) slog.Attr {
	value := a.Value.Resolve()
	if value.Kind() == slog.KindGroup {
		group := value.Group()
		clean := make([]any, len(group))
		for i, member := range group {
			clean[i] = h.attr(member)
		}
		return slog.Group(a.Key, clean...)
	}
	text := value.String()
	if redacted := h.secrets.redact(text); redacted != text {
		return slog.String(a.Key, redacted)
	}
	return slog.Attr{Key: a.Key, Value: value}
}
