"""The lab: topology files, the planning report, and (in ``launcher``) one command to a running network.

Nothing is imported here on purpose: ``qsdn`` registers the ``plan`` and ``lab`` commands at start-up,
and the planning report's matplotlib and path computation are loaded only when a command needs them.
"""
