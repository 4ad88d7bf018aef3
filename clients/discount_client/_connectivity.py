"""Whether a client's channel has connected to the server: a call that gRPC ends by its deadline
then says whether the server could be reached (gRPC's own message is "Deadline Exceeded" either
way). The two kinds of channel tell their state differently, hence one class each; the clients
call them the same way."""

from __future__ import annotations

import threading

import grpc


class ChannelReadiness:
    """For a `grpc.Channel`, which tells its state only to a subscriber. A subscription keeps a
    polling thread busy while it lasts, so it lasts until the first connection: afterwards the
    channel counts as connected for good."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._connected = False
        self._subscribed = True
        self._lock = threading.Lock()  # the subscription calls back from gRPC's polling thread
        channel.subscribe(self._on_state)

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        if state is grpc.ChannelConnectivity.READY:
            self.mark_connected()

    def mark_connected(self) -> None:
        """Records that the server answered (a call succeeded), whatever the subscription saw."""
        self._connected = True
        self.stop()

    def connected(self) -> bool:
        """Whether the channel has connected since the client was made."""
        return self._connected

    def stop(self) -> None:
        """Ends the subscription before the channel closes, so gRPC's polling thread does not keep
        watching a closed channel of a client that never connected."""
        with self._lock:
            if not self._subscribed:
                return
            self._subscribed = False
        self._channel.unsubscribe(self._on_state)


class AsyncChannelReadiness:
    """For a `grpc.aio.Channel`, which tells its state when asked: no subscription, no thread."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._connected = False

    def mark_connected(self) -> None:
        """Records that the server answered (a call succeeded)."""
        self._connected = True

    def stop(self) -> None:
        """Nothing to end: the async channel is asked for its state, not subscribed to."""

    def connected(self) -> bool:
        """Whether the channel is connected now or was when a call succeeded."""
        if not self._connected:
            self._connected = self._channel.get_state() is grpc.ChannelConnectivity.READY
        return self._connected
