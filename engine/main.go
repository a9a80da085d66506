// fhr-helm-engine runs Helm actions for helm-operator in one resident process, on the Helm 4 SDK.
//
// helm-operator starts it, writes requests to its stdin and reads replies from its stdout, one
// JSON object per line (see protocol.go). Values arrive only in request bodies: never in argv,
// the environment or a log line. The engine exits as soon as its stdin closes, so it never acts
// without the operator that supervises it.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"helm.sh/helm/v4/pkg/chart/common"
)

// maxRequest bounds one request line (values included).
const maxRequest = 32 << 20

func main() {
	workers := flag.Int("workers", 4, "requests run at once; more wait in line")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file (default: in-cluster, then $KUBECONFIG)")
	allowLookup := flag.Bool("allow-lookup", true, "let templates read the cluster with Helm's lookup; false renders with no cluster access (lookup finds nothing)")
	version := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *version {
		fmt.Printf("fhr-helm-engine protocol %d, helm %s\n", ProtocolVersion, common.DefaultCapabilities.HelmVersion.Version)
		return
	}
	// Logs go to stderr, which the operator forwards; Helm's own chatter stays at warnings.
	logger := slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})
	slog.SetDefault(slog.New(logger))
	klog.SetSlogLogger(slog.New(logger))
	if err := serve(os.Stdin, os.Stdout, *workers, *kubeconfig, *allowLookup, logger); err != nil {
		slog.Error("engine stopped", "error", err.Error())
		os.Exit(1)
	}
}

func serve(in io.Reader, out io.Writer, workers int, kubeconfig string, allowLookup bool, logger slog.Handler) error {
	cl, err := newCluster(kubeconfig)
	if err != nil {
		return fmt.Errorf("cluster configuration: %w", err)
	}
	e := &engine{cluster: cl, charts: newChartCache(256), logger: logger, allowLookup: allowLookup}
	w := &replies{enc: json.NewEncoder(out)}
	if err := w.send(Hello{HelloBody{Protocol: ProtocolVersion, Helm: common.DefaultCapabilities.HelmVersion.Version, Workers: workers}}); err != nil {
		return err
	}

	slots := make(chan struct{}, max(workers, 1))
	var mu sync.Mutex
	running := map[uint64]context.CancelFunc{}

	scanner := bufio.NewScanner(in)
	scanner.Buffer(make([]byte, 64<<10), maxRequest)
	for scanner.Scan() {
		var req Request
		if err := json.Unmarshal(scanner.Bytes(), &req); err != nil {
			// The id cannot be trusted either: answer id 0, which the operator treats as fatal.
			_ = w.send(Reply{Error: &Failure{Kind: KindInvalid, Message: "malformed request: " + bounded(err.Error())}})
			continue
		}
		if req.Cancel != nil {
			mu.Lock()
			if cancel, ok := running[req.Cancel.Target]; ok {
				cancel()
			}
			mu.Unlock()
			continue
		}
		deadline := time.Duration(req.DeadlineMS) * time.Millisecond
		if deadline <= 0 {
			deadline = 10 * time.Minute
		}
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		mu.Lock()
		running[req.ID] = cancel
		mu.Unlock()
		go func() {
			defer func() {
				mu.Lock()
				delete(running, req.ID)
				mu.Unlock()
				cancel()
			}()
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				_ = w.send(withID(req.ID, failure(ctx.Err())))
				return
			}
			reply := e.handle(ctx, &req)
			<-slots
			_ = w.send(withID(req.ID, reply))
		}()
	}
	if err := scanner.Err(); err != nil {
		return fmt.Errorf("reading requests: %w", err)
	}
	// stdin closed: the operator is gone. Stop at once rather than finish actions nobody
	// supervises; the next operator finds them pending and recovers them.
	os.Exit(0)
	return nil
}

func (e *engine) handle(ctx context.Context, req *Request) (reply Reply) {
	defer func() {
		if p := recover(); p != nil {
			reply = Reply{Error: &Failure{Kind: KindFailed, Message: bounded(fmt.Sprintf("engine panic: %v", p))}}
		}
	}()
	switch {
	case req.Upgrade != nil:
		return e.upgrade(ctx, req.Upgrade)
	case req.Rollback != nil:
		return e.rollback(req.Rollback)
	case req.Uninstall != nil:
		return e.uninstall(req.Uninstall)
	case req.History != nil:
		return e.history(req.History)
	case req.Status != nil:
		return e.status(req.Status)
	case req.Unlock != nil:
		return e.unlock(ctx, req.Unlock)
	}
	return Reply{Error: &Failure{Kind: KindInvalid, Message: "request names no operation"}}
}

func withID(id uint64, reply Reply) Reply {
	reply.ID = id
	return reply
}

// replies writes one JSON line at a time.
type replies struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (r *replies) send(v any) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.enc.Encode(v)
}
