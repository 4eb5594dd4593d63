// kube-local: a real Kubernetes control plane for development and tests.
//
// One binary, three subcommands, each run as its own process by hack/devcluster.py:
//
//	kube-local pki --dir D                  CA, serving, admin client and service-account keys
//	kube-local apiserver --dir D ...        embedded etcd + the real kube-apiserver
//	kube-local controller-manager -- ...    the real kube-controller-manager (gc, namespace)
//
// Nothing here reimplements Kubernetes: apiserver and controller-manager are the
// upstream cobra commands, etcd is the upstream embed package.
package main

import (
	"fmt"
	"os"
	_ "time/tzdata"

	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: kube-local pki|apiserver|controller-manager [flags]")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	sub, rest := os.Args[1], os.Args[2:]
	switch sub {
	case "pki":
		if err := runPKI(rest); err != nil {
			fmt.Fprintln(os.Stderr, "pki:", err)
			os.Exit(1)
		}
	case "apiserver":
		os.Exit(runAPIServer(rest))
	case "controller-manager":
		os.Exit(runControllerManager(rest))
	case "version":
		fmt.Println(kubernetesVersion())
	default:
		usage()
	}
}
