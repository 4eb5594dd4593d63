pytest_plugins = ["upstreams"]
