package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"text/template"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"helm.sh/helm/v4/pkg/action"
	helmengine "helm.sh/helm/v4/pkg/engine"
	"helm.sh/helm/v4/pkg/kube"
	ri "helm.sh/helm/v4/pkg/release"
	"helm.sh/helm/v4/pkg/release/common"
	rv1 "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/storage/driver"
)

// maxMessage bounds an error's text: template errors quote chart content, which is untrusted.
const maxMessage = 2000

// engine runs Helm actions against one cluster.
type engine struct {
	cluster *cluster
	charts  *chartCache
	logger  slog.Handler
	// allowLookup false replaces Helm's lookup with one that finds nothing, as `helm template`
	// renders: a chart author then cannot read the cluster through a template.
	allowLookup bool
}

// configuration is Helm's per-action state for one namespace, built on the shared cluster.
// Helm logs its errors, which quote values: its log goes through a handler that redacts the
// request's secrets (nil: an action that renders no template), to which lookup adds the values of
// every Secret it returns.
func (e *engine) configuration(ref ReleaseRef, secrets *secretSet) (*action.Configuration, error) {
	namespace := ref.Namespace
	id, err := e.cluster.as(ref.Namespace, ref.ServiceAccount)
	if err != nil {
		return nil, err
	}
	logger := e.logger
	if secrets != nil {
		logger = redactingHandler{inner: e.logger, secrets: secrets}
	}
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(logger))
	if err := cfg.Init(namespaceGetter{e.cluster, namespace, id}, namespace, "secret"); err != nil {
		return nil, err
	}
	caps, err := e.cluster.Capabilities()
	if err != nil {
		return nil, err
	}
	cfg.Capabilities = caps
	switch {
	case !e.allowLookup:
		cfg.CustomTemplateFuncs = template.FuncMap{"lookup": noLookup}
	case secrets != nil:
		// Helm's own lookup, as the release's identity, remembering what it read of Secrets: a
		// template can pass such a value to `fail`, and no message may carry it out.
		lookup := helmengine.NewLookupFunction(rest.CopyConfig(id.config))
		cfg.CustomTemplateFuncs = template.FuncMap{
			"lookup": func(apiVersion, kind, namespace, name string) (map[string]any, error) {
				object, err := lookup(apiVersion, kind, namespace, name)
				secrets.add(lookedUpSecrets(object)...)
				return object, err
			},
		}
	}
	return cfg, nil
}

// noLookup is Helm's lookup without a cluster: an empty object or list, as in `helm template`.
func noLookup(apiVersion, kind, namespace, name string) (map[string]any, error) {
	return map[string]any{}, nil
}

func waitStrategy(wait bool) kube.WaitStrategy {
	if wait {
		return kube.StatusWatcherStrategy
	}
	return kube.HookOnlyStrategy
}

// upgrade is `helm upgrade --install --reset-values`: install when the release has no history.
// Template errors quote values, so every message leaves with the Secrets' values replaced.
func (e *engine) upgrade(ctx context.Context, r *UpgradeRequest) Reply {
	secrets := newSecretSet(r.Redact)
	reply := e.upgradeOnce(ctx, r, secrets)
	if reply.Error != nil {
		reply.Error.Message = secrets.redact(reply.Error.Message)
	}
	return reply
}

func (e *engine) upgradeOnce(ctx context.Context, r *UpgradeRequest, secrets *secretSet) Reply {
	cfg, err := e.configuration(r.ReleaseRef, secrets)
	if err != nil {
		return failure(err)
	}
	chrt, err := e.charts.Load(r.ChartDir)
	if err != nil {
		return Reply{Error: &Failure{Kind: KindFailed, Message: bounded("loading chart: " + err.Error())}}
	}
	timeout := time.Duration(r.TimeoutMS) * time.Millisecond
	_, err = cfg.Releases.History(r.Release)
	var rel ri.Releaser
	switch {
	case errors.Is(err, driver.ErrReleaseNotFound):
		install := action.NewInstall(cfg)
		install.ReleaseName = r.Release
		install.Namespace = r.Namespace
		install.Timeout = timeout
		install.WaitStrategy = waitStrategy(r.Wait)
		install.Labels = r.Labels
		// The API server validates every object strictly (server-side apply, fieldValidation
		// Strict); validating against the downloaded OpenAPI schema first is the CLI's cost.
		install.DisableOpenAPIValidation = true
		install.ServerSideApply = true
		install.ForceConflicts = true
		rel, err = install.RunWithContext(ctx, chrt, r.Values)
	case err != nil:
		return failure(err)
	default:
		upgrade := action.NewUpgrade(cfg)
		upgrade.Namespace = r.Namespace
		upgrade.Timeout = timeout
		upgrade.WaitStrategy = waitStrategy(r.Wait)
		upgrade.Labels = r.Labels
		upgrade.ResetValues = true
		upgrade.MaxHistory = r.MaxHistory
		upgrade.DisableOpenAPIValidation = true
		// Git is the authority: fields someone changed by hand are taken back, not a conflict.
		upgrade.ForceConflicts = true
		rel, err = upgrade.RunWithContext(ctx, r.Release, chrt, r.Values)
	}
	if err != nil {
		if isNoMatch(err) || strings.Contains(err.Error(), "no matches for kind") {
			e.cluster.Forget()
		}
		return failure(err)
	}
	return landed(rel)
}

func (e *engine) rollback(r *RollbackRequest) Reply {
	cfg, err := e.configuration(r.ReleaseRef, nil)
	if err != nil {
		return failure(err)
	}
	rollback := action.NewRollback(cfg)
	rollback.Version = r.Revision
	rollback.Timeout = time.Duration(r.TimeoutMS) * time.Millisecond
	rollback.WaitStrategy = waitStrategy(r.Wait)
	rollback.DisableHooks = r.DisableHooks
	rollback.ForceConflicts = true
	// Helm's rollback takes no context: it ends at its own timeout, or with the engine if the
	// operator's deadline passes first. Never answered early while it goes on writing.
	if err := rollback.Run(r.Release); err != nil {
		return failure(err)
	}
	last, err := cfg.Releases.Last(r.Release)
	if err != nil {
		return failure(err)
	}
	return landed(last)
}

func (e *engine) uninstall(r *UninstallRequest) Reply {
	cfg, err := e.configuration(r.ReleaseRef, nil)
	if err != nil {
		return failure(err)
	}
	uninstall := action.NewUninstall(cfg)
	uninstall.Timeout = time.Duration(r.TimeoutMS) * time.Millisecond
	uninstall.IgnoreNotFound = true
	uninstall.WaitStrategy = kube.HookOnlyStrategy
	// As rollback: no context, bounded by its timeout and the operator's deadline.
	if _, err := uninstall.Run(r.Release); err != nil {
		return failure(err)
	}
	return Reply{Done: &struct{}{}}
}

func (e *engine) history(r *ReleaseRef) Reply {
	cfg, err := e.configuration(*r, nil)
	if err != nil {
		return failure(err)
	}
	releases, err := cfg.Releases.History(r.Release)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return Reply{History: &[]Revision{}}
	}
	if err != nil {
		return failure(err)
	}
	out := make([]Revision, 0, len(releases))
	for _, rel := range releases {
		if v1, ok := rel.(*rv1.Release); ok {
			out = append(out, revisionOf(v1))
		}
	}
	return Reply{History: &out}
}

func (e *engine) status(r *ReleaseRef) Reply {
	cfg, err := e.configuration(*r, nil)
	if err != nil {
		return failure(err)
	}
	last, err := cfg.Releases.Last(r.Release)
	if err != nil {
		return failure(err)
	}
	return landed(last)
}

// unlock marks a revision an interrupted action left pending-* as failed, as Helm would have had
// the action finished. It writes with the record's resourceVersion: if another writer got there
// first, nothing is overwritten and the answer is a conflict.
func (e *engine) unlock(ctx context.Context, r *UnlockRequest) Reply {
	id, err := e.cluster.as(r.Namespace, r.ServiceAccount)
	if err != nil {
		return failure(err)
	}
	secrets := id.clientset.CoreV1().Secrets(r.Namespace)
	name := fmt.Sprintf("sh.helm.release.v1.%s.v%d", r.Release, r.Revision)
	secret, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return failure(err)
	}
	rel, err := decodeRelease(string(secret.Data["release"]))
	if err != nil {
		return failure(err)
	}
	if !rel.Info.Status.IsPending() {
		// Someone finished or unlocked it first: nothing left to do.
		return Reply{Landed: &Landed{Revision: rel.Version, Status: string(rel.Info.Status)}}
	}
	rel.SetStatus(common.StatusFailed, "interrupted: the operator stopped during "+string(rel.Info.Status)+" and marked it failed")
	rel.Info.LastDeployed = time.Now()
	data, err := encodeRelease(rel)
	if err != nil {
		return failure(err)
	}
	secret.Data["release"] = []byte(data)
	secret.Labels["status"] = string(common.StatusFailed)
	secret.Labels["modifiedAt"] = strconv.FormatInt(time.Now().Unix(), 10)
	if _, err := secrets.Update(ctx, secret, metav1.UpdateOptions{}); err != nil {
		return failure(err)
	}
	return Reply{Landed: &Landed{Revision: rel.Version, Status: string(common.StatusFailed)}}
}

func landed(rel ri.Releaser) Reply {
	v1, ok := rel.(*rv1.Release)
	if !ok || v1 == nil || v1.Info == nil {
		return Reply{Error: &Failure{Kind: KindFailed, Message: "helm returned no release"}}
	}
	return Reply{Landed: &Landed{Revision: v1.Version, Status: string(v1.Info.Status)}}
}

func revisionOf(rel *rv1.Release) Revision {
	out := Revision{Revision: rel.Version}
	if rel.Info != nil {
		out.Status = string(rel.Info.Status)
		out.Updated = rel.Info.LastDeployed.UTC().Format(time.RFC3339)
		out.Description = bounded(rel.Info.Description)
	}
	if rel.Chart != nil && rel.Chart.Metadata != nil {
		out.Chart = rel.Chart.Metadata.Name + "-" + rel.Chart.Metadata.Version
		out.AppVersion = rel.Chart.Metadata.AppVersion
	}
	return out
}

// failure gives an error its kind.
func failure(err error) Reply {
	kind := KindFailed
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		kind = KindTimeout
	case errors.Is(err, context.Canceled):
		kind = KindCancelled
	case errors.Is(err, driver.ErrReleaseNotFound), apierrors.IsNotFound(err):
		kind = KindNotFound
	case apierrors.IsConflict(err):
		kind = KindConflict
	case apierrors.IsServiceUnavailable(err), apierrors.IsServerTimeout(err), isConnectionError(err):
		kind = KindUnreachable
	}
	return Reply{Error: &Failure{Kind: kind, Message: bounded(err.Error())}}
}

func isConnectionError(err error) bool {
	text := err.Error()
	return strings.Contains(text, "connection refused") || strings.Contains(text, "Kubernetes cluster unreachable")
}

func bounded(text string) string {
	if len(text) <= maxMessage {
		return text
	}
	cut := maxMessage
	for cut > 0 && !utf8Start(text[cut]) {
		cut--
	}
	return text[:cut] + "…"
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// Helm's storage encoding: base64 of gzipped JSON.
func encodeRelease(rel *rv1.Release) (string, error) {
	raw, err := json.Marshal(rel)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	w, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return "", err
	}
	if _, err := w.Write(raw); err != nil {
		return "", err
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes()), nil
}

func decodeRelease(data string) (*rv1.Release, error) {
	raw, err := base64.StdEncoding.DecodeString(data)
	if err != nil {
		return nil, err
	}
	if len(raw) > 2 && raw[0] == 0x1f && raw[1] == 0x8b {
		r, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, err
		}
		defer r.Close()
		if raw, err = io.ReadAll(io.LimitReader(r, 64<<20)); err != nil {
			return nil, err
		}
	}
	var rel rv1.Release
	if err := json.Unmarshal(raw, &rel); err != nil {
		return nil, err
	}
	if rel.Info == nil {
		return nil, errors.New("release record has no info")
	}
	return &rel, nil
}
