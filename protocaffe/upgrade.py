"""(being written) Format upgrades applied on load."""


def upgrade_net(param, source="<net>"):
    return param
