package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func kubernetesVersion() string { return version.Get().GitVersion }

// runAPIServer starts etcd in this process, waits for it, then hands the process
// to the upstream kube-apiserver command. Arguments after our own flags (and an
// optional "--") are passed to kube-apiserver verbatim and override the defaults.
func runAPIServer(args []string) int {
	fs := flag.NewFlagSet("apiserver", flag.ExitOnError)
	dir := fs.String("dir", "", "state directory holding pki/ (from `pki`) and etcd/")
	port := fs.Int("port", 6443, "kube-apiserver secure port on 127.0.0.1")
	etcdPort := fs.Int("etcd-port", 2379, "etcd client port on 127.0.0.1 (peer port is +1)")
	noFsync := fs.Bool("unsafe-no-fsync", false, "skip fsync in etcd (throwaway test clusters)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "apiserver: --dir is required")
		return 2
	}

	etcd, err := startEtcd(filepath.Join(*dir, "etcd"), *etcdPort, *noFsync)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
	defer etcd.Close()

	pki := filepath.Join(*dir, "pki")
	defaults := []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(*port),
		"--etcd-servers=" + fmt.Sprintf("http://127.0.0.1:%d", *etcdPort),
		"--tls-cert-file=" + filepath.Join(pki, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(pki, "apiserver.key"),
		"--client-ca-file=" + filepath.Join(pki, "ca.crt"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + filepath.Join(pki, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(pki, "sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--cert-dir=" + filepath.Join(*dir, "certs"),
		"--profiling=false",
		// The "kubernetes" Service endpoints would have to be a non-loopback IP; nothing here needs them.
		"--endpoint-reconciler-type=none",
	}
	cmd := apiserver.NewAPIServerCommand()
	cmd.SetArgs(append(defaults, fs.Args()...))
	return cli.Run(cmd)
}

func startEtcd(dataDir string, port int, noFsync bool) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "kube-local"
	cfg.Dir = dataDir
	cfg.LogLevel = "error"
	cfg.UnsafeNoFsync = noFsync
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", port)}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", port+1)}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("not ready after 60s")
	}
}

// runControllerManager runs the upstream kube-controller-manager with the given
// flags (devcluster.py passes --kubeconfig and --controllers).
func runControllerManager(args []string) int {
	cmd := controllermanager.NewControllerManagerCommand()
	cmd.SetArgs(args)
	return cli.Run(cmd)
}
