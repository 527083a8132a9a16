"""Plain data: what a bundle is, what a file reference is. No I/O here."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FileRef:
    """One file of a bundle: where it lives (`src`) and, optionally, its path in the zip (`dst`)."""

    src: str
    dst: str | None = None
    crc32: int | None = None  # optional, given by the client to make resumable downloads cheaper

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"src": self.src}
        if self.dst is not None:
            data["dst"] = self.dst
        if self.crc32 is not None:
            data["crc32"] = self.crc32
        return data


@dataclass(frozen=True)
class Bundle:
    """A stored list of file references that downloads as one zip."""

    id: str
    secret: str
    filename: str
    files: tuple[FileRef, ...]
    expiration_date: int  # unix seconds, as the Node service's `expirationDate`
    compression: str = "stored"
    created_at: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def new(
        cls, filename: str, files: tuple[FileRef, ...], lifetime_minutes: int, compression: str = "stored",
        now: float | None = None,
    ) -> Bundle:
        """A fresh bundle with random UUIDv4 id and secret."""
        now = time.time() if now is None else now
        return cls(
            id=str(uuid.uuid4()),
            secret=str(uuid.uuid4()),
            filename=filename,
            files=files,
            expiration_date=int(now) + lifetime_minutes * 60,
            compression=compression,
            created_at=int(now),
        )

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expiration_date

    def to_json(self) -> dict[str, object]:
        """The Node service's JSON shape, plus `compression`."""
        return {
            "id": self.id,
            "secret": self.secret,
            "filename": self.filename,
            "files": [ref.to_json() for ref in self.files],
            "expirationDate": self.expiration_date,
            "compression": self.compression,
        }
