"""Serves the secure-webhooks package: the Webhooks component, through Pulumi's component provider host."""

from importlib.metadata import version

from pulumi.provider.experimental import component_provider_host

from secure_webhooks.plugin_component import PACKAGE, Webhooks

if __name__ == "__main__":
    component_provider_host([Webhooks], name=PACKAGE, version=version("secure-webhooks"))
