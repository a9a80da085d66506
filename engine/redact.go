package main

import (
	"context"
	"log/slog"
	"strings"
)

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
	secrets []string
}

func (h redactingHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

func (h redactingHandler) Handle(ctx context.Context, record slog.Record) error {
	out := slog.NewRecord(record.Time, record.Level, redact(record.Message, h.secrets), record.PC)
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
	if redacted := redact(text, h.secrets); redacted != text {
		return slog.String(a.Key, redacted)
	}
	return slog.Attr{Key: a.Key, Value: value}
}
