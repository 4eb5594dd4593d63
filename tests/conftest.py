pytest_plugins = ["upstreams", "cluster"]
