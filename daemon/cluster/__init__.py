"""dfsd's cluster machinery: gossip membership, self-healing (repair, scrub, hinted handoff),
hot-chunk copies, the deletion log and the layout controller.

Each module holds one mechanism and knows nothing of the RPC service: the service
(daemon/service/) builds them and hands them the stores and callables they need.
"""
