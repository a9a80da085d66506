package main

// The protocol between helm-operator and the engine: newline-delimited JSON on stdin (requests)
// and stdout (replies). The first line the engine writes is a Hello; the operator refuses an
// engine whose protocol version it does not know. crates/helm-operator/src/engine/protocol.rs is
// the other half and must change with this file.

// ProtocolVersion changes whenever a message changes incompatibly.
const ProtocolVersion = 1

// Hello is the engine's first line.
type Hello struct {
	Hello HelloBody `json:"hello"`
}

// HelloBody says what the engine speaks.
type HelloBody struct {
	Protocol int    `json:"protocol"`
	Helm     string `json:"helm"`
	Workers  int    `json:"workers"`
}

// Request is one line from the operator: an id, a deadline, and exactly one operation.
type Request struct {
	ID         uint64            `json:"id"`
	DeadlineMS int64             `json:"deadline_ms"`
	Upgrade    *UpgradeRequest   `json:"upgrade,omitempty"`
	Rollback   *RollbackRequest  `json:"rollback,omitempty"`
	Uninstall  *UninstallRequest `json:"uninstall,omitempty"`
	History    *ReleaseRef       `json:"history,omitempty"`
	Status     *ReleaseRef       `json:"status,omitempty"`
	Unlock     *UnlockRequest    `json:"unlock,omitempty"`
	Cancel     *CancelRequest    `json:"cancel,omitempty"`
}

// ReleaseRef names a release, and the ServiceAccount of its namespace that acts on it.
type ReleaseRef struct {
	Release   string `json:"release"`
	Namespace string `json:"namespace"`
	// ServiceAccount, when set, is impersonated for everything done for this request: the
	// actions, Helm's storage, and the templates' lookup.
	ServiceAccount string `json:"service_account,omitempty"`
}

// UpgradeRequest installs or upgrades a release (helm upgrade --install --reset-values).
type UpgradeRequest struct {
	ReleaseRef
	Install    bool              `json:"install"`
	ChartDir   string            `json:"chart_dir"`
	Values     map[string]any    `json:"values"`
	Labels     map[string]string `json:"labels"`
	TimeoutMS  int64             `json:"timeout_ms"`
	Wait       bool              `json:"wait"`
	MaxHistory int               `json:"max_history"`
	// Redact lists values read from Secrets: they never appear in a reply or a log line.
	Redact []string `json:"redact"`
}

// RollbackRequest rolls a release back to a revision.
type RollbackRequest struct {
	ReleaseRef
	Revision     int   `json:"revision"`
	TimeoutMS    int64 `json:"timeout_ms"`
	Wait         bool  `json:"wait"`
	DisableHooks bool  `json:"disable_hooks"`
}

// UninstallRequest uninstalls a release; a missing release is not an error.
type UninstallRequest struct {
	ReleaseRef
	TimeoutMS int64 `json:"timeout_ms"`
}

// UnlockRequest marks a revision an interrupted action left pending-* as failed.
type UnlockRequest struct {
	ReleaseRef
	Revision int `json:"revision"`
}

// CancelRequest cancels the request with id Target.
type CancelRequest struct {
	Target uint64 `json:"target"`
}

// Reply answers the request with the same id: exactly one of the other fields is set.
type Reply struct {
	ID      uint64      `json:"id"`
	Landed  *Landed     `json:"landed,omitempty"`
	History *[]Revision `json:"history,omitempty"`
	Done    *struct{}   `json:"done,omitempty"`
	Error   *Failure    `json:"error,omitempty"`
}

// Landed is the revision an action left, and its Helm status.
type Landed struct {
	Revision int    `json:"revision"`
	Status   string `json:"status"`
}

// Revision is one entry of a release's history.
type Revision struct {
	Revision    int    `json:"revision"`
	Status      string `json:"status"`
	Chart       string `json:"chart"`
	AppVersion  string `json:"app_version"`
	Updated     string `json:"updated"`
	Description string `json:"description"`
}

// Failure is an error with a kind the operator can act on.
type Failure struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

// The kinds of Failure.
const (
	// KindFailed: Helm ran and refused or failed (template error, API server refusal, hooks).
	KindFailed = "failed"
	// KindTimeout: the request's deadline passed.
	KindTimeout = "timeout"
	// KindCancelled: the operator cancelled the request.
	KindCancelled = "cancelled"
	// KindInvalid: the request itself was malformed.
	KindInvalid = "invalid"
	// KindNotFound: the release or revision does not exist.
	KindNotFound = "not_found"
	// KindConflict: someone else changed the release record first.
	KindConflict = "conflict"
	// KindUnreachable: the API server could not be reached.
	KindUnreachable = "unreachable"
)
