package main

import (
	"errors"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
)

// cluster is what every request shares: one REST config, one in-memory discovery cache and one
// REST mapper, so that no action downloads discovery or the OpenAPI schema again. Helm's CLI
// builds all three anew in every process; that is most of its CPU.
type cluster struct {
	config    *rest.Config
	loader    clientcmd.ClientConfig
	discovery discovery.CachedDiscoveryInterface
	mapper    *refreshingMapper

	mu           sync.Mutex
	capabilities *common.Capabilities
	identities   map[string]*identity
}

func newCluster(kubeconfig string) (*cluster, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	config, err := loader.ClientConfig()
	if err != nil {
		return nil, err
	}
	// Requests run concurrently; client-go's default of 5 QPS would serialise them.
	config.QPS = 100
	config.Burst = 200
	dc, err := discovery.NewDiscoveryClientForConfig(config)
	if err != nil {
		return nil, err
	}
	cached := memory.NewMemCacheClient(dc)
	return &cluster{
		config:     config,
		loader:     loader,
		discovery:  cached,
		identities: map[string]*identity{},
		mapper:     &refreshingMapper{DeferredDiscoveryRESTMapper: restmapper.NewDeferredDiscoveryRESTMapper(cached), discovery: cached},
	}, nil
}

// The genericclioptions.RESTClientGetter Helm's action.Configuration wants.

func (c *cluster) ToDiscoveryClient() (discovery.CachedDiscoveryInterface, error) {
	return c.discovery, nil
}
func (c *cluster) ToRESTMapper() (meta.RESTMapper, error)        { return c.mapper, nil }
func (c *cluster) ToRawKubeConfigLoader() clientcmd.ClientConfig { return c.loader }

// Capabilities are what .Capabilities in templates sees. Helm recomputes them (a full discovery)
// in every action; the engine computes them once and again after a kind was not found, which is
// when the cluster's APIs changed under it.
func (c *cluster) Capabilities() (*common.Capabilities, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.capabilities != nil {
		return c.capabilities, nil
	}
	version, err := c.discovery.ServerVersion()
	if err != nil {
		return nil, err
	}
	versions, err := action.GetVersionSet(c.discovery)
	if err != nil && !discovery.IsGroupDiscoveryFailedError(err) {
		return nil, err
	}
	c.capabilities = &common.Capabilities{
		APIVersions: versions,
		KubeVersion: common.KubeVersion{
			Version: version.GitVersion,
			Major:   version.Major,
			Minor:   version.Minor,
		},
		HelmVersion: common.DefaultCapabilities.HelmVersion,
	}
	return c.capabilities, nil
}

// Forget drops what discovery told, so that a CRD installed since is found.
func (c *cluster) Forget() {
	c.mu.Lock()
	c.capabilities = nil
	c.mu.Unlock()
	c.mapper.Reset()
}

// refreshingMapper is the deferred discovery mapper, but a kind it does not know makes it ask
// discovery again once: the in-memory cache never goes stale on its own, and a CRD installed
// after the engine started (by another release, or by this chart's crds/) must still map.
type refreshingMapper struct {
	*restmapper.DeferredDiscoveryRESTMapper
	discovery discovery.CachedDiscoveryInterface
}

func (m *refreshingMapper) RESTMapping(gk schema.GroupKind, versions ...string) (*meta.RESTMapping, error) {
	mapping, err := m.DeferredDiscoveryRESTMapper.RESTMapping(gk, versions...)
	if isNoMatch(err) {
		m.Reset()
		return m.DeferredDiscoveryRESTMapper.RESTMapping(gk, versions...)
	}
	return mapping, err
}

func (m *refreshingMapper) RESTMappings(gk schema.GroupKind, versions ...string) ([]*meta.RESTMapping, error) {
	mappings, err := m.DeferredDiscoveryRESTMapper.RESTMappings(gk, versions...)
	if isNoMatch(err) {
		m.Reset()
		return m.DeferredDiscoveryRESTMapper.RESTMappings(gk, versions...)
	}
	return mappings, err
}

func (m *refreshingMapper) KindFor(resource schema.GroupVersionResource) (schema.GroupVersionKind, error) {
	kind, err := m.DeferredDiscoveryRESTMapper.KindFor(resource)
	if isNoMatch(err) {
		m.Reset()
		return m.DeferredDiscoveryRESTMapper.KindFor(resource)
	}
	return kind, err
}

// Reset invalidates the discovery cache as well as the mapper built from it.
func (m *refreshingMapper) Reset() {
	m.discovery.Invalidate()
	m.DeferredDiscoveryRESTMapper.Reset()
}

func isNoMatch(err error) bool {
	if err == nil {
		return false
	}
	var noKind *meta.NoKindMatchError
	var noResource *meta.NoResourceMatchError
	return meta.IsNoMatchError(err) || errors.As(err, &noKind) || errors.As(err, &noResource)
}

// identity is the REST config and clientset of one user the engine acts as.
type identity struct {
	config    *rest.Config
	clientset kubernetes.Interface
}

// as returns the identity of ServiceAccount name of namespace, or the engine's own for "".
// Only the user is impersonated: the API server adds a ServiceAccount's groups itself, so the
// operator needs the impersonate verb on serviceaccounts and nothing on groups.
func (c *cluster) as(namespace, name string) (*identity, error) {
	user := ""
	if name != "" {
		user = "system:serviceaccount:" + namespace + ":" + name
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if id, ok := c.identities[user]; ok {
		return id, nil
	}
	config := rest.CopyConfig(c.config)
	config.Impersonate = rest.ImpersonationConfig{UserName: user}
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		return nil, err
	}
	id := &identity{config: config, clientset: clientset}
	if len(c.identities) >= maxIdentities {
		// Clients are cheap to make again; a bound keeps tenants from growing this forever.
		clear(c.identities)
	}
	c.identities[user] = id
	return id, nil
}

// maxIdentities bounds the cached identities (one per ServiceAccount in use).
const maxIdentities = 1024

// namespaceGetter is the shared cluster seen from one release namespace as one identity: Helm
// puts objects that name no namespace into the namespace its client config reports, and every
// request (lookup included) goes out as the identity. Discovery and the REST mapping are shared:
// they describe the cluster's kinds, not what the identity may do.
type namespaceGetter struct {
	*cluster
	namespace string
	identity  *identity
}

func (g namespaceGetter) ToRESTConfig() (*rest.Config, error) {
	return rest.CopyConfig(g.identity.config), nil
}

func (g namespaceGetter) ToRawKubeConfigLoader() clientcmd.ClientConfig {
	return namespacedConfig{base: g.loader, namespace: g.namespace}
}

type namespacedConfig struct {
	base      clientcmd.ClientConfig
	namespace string
}

func (c namespacedConfig) RawConfig() (clientcmdapi.Config, error) { return c.base.RawConfig() }
func (c namespacedConfig) ClientConfig() (*rest.Config, error)     { return c.base.ClientConfig() }
func (c namespacedConfig) ConfigAccess() clientcmd.ConfigAccess    { return c.base.ConfigAccess() }
func (c namespacedConfig) Namespace() (string, bool, error)        { return c.namespace, true, nil }
