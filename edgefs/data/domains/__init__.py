"""Multi-domain few-shot benchmark built offline from Debian and npm packages.

Each module registers one domain with ``@DOMAINS.register(name)``; :data:`DOMAINS` finds
the modules of this package itself, and the CLI's ``edgefs data <domain>`` subcommands
are generated from it. Emoji image sets are never used (they are reserved for an
independent check).
"""

from edgefs.data.domains.base import DOMAINS, Domain, Item, split_classes
from edgefs.data.domains.build import add_domain_parsers, build_domain, run_domain_command

__all__ = ["DOMAINS", "Domain", "Item", "add_domain_parsers", "build_domain", "run_domain_command",
           "split_classes"]
