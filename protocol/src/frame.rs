//! Length-prefixed Kafka frames: a big-endian i32 size, then the request.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: i64, limit: usize },
    #[error("negative frame size {0}")]
    Negative(i32),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Read one frame. `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_size: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = i32::from_be_bytes(len);
    if size < 0 {
        return Err(FrameError::Negative(size));
    }
    if size as usize > max_size {
        return Err(FrameError::TooLarge {
            size: size as i64,
            limit: max_size,
        });
    }
    // Read straight into spare capacity: no zeroing of a buffer that the
    // socket is about to overwrite.
    let size = size as usize;
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let want = (size - buf.len()) as u64;
        if (&mut *r).take(want).read_buf(&mut buf).await? == 0 {
            return Err(FrameError::Truncated);
        }
    }
    Ok(Some(buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_frames_and_rejects_oversized_or_negative() {
        let mut data: &[u8] = &[0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 1];
        assert_eq!(
            read_frame(&mut data, 10).await.unwrap().unwrap(),
            Bytes::from_static(b"abc")
        );
        assert!(matches!(
            read_frame(&mut data, 10).await,
            Err(FrameError::Truncated)
        ));
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, 10).await.unwrap().is_none());
        let mut big: &[u8] = &[0, 0, 1, 0];
        assert!(matches!(
            read_frame(&mut big, 10).await,
            Err(FrameError::TooLarge { size: 256, .. })
        ));
        let mut neg: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut neg, 10).await,
            Err(FrameError::Negative(-1))
        ));
    }
}

/// Bytes held in parts, read in order: a frame written with vectored I/O
/// without first joining its parts.
#[derive(Debug, Default)]
pub struct PartsBuf {
    parts: std::collections::VecDeque<Bytes>,
    remaining: usize,
}

impl PartsBuf {
    pub fn new(parts: impl IntoIterator<Item = Bytes>) -> Self {
        let parts: std::collections::VecDeque<Bytes> =
            parts.into_iter().filter(|p| !p.is_empty()).collect();
        let remaining = parts.iter().map(|p| p.len()).sum();
        Self { parts, remaining }
    }
}

impl bytes::Buf for PartsBuf {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| &p[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self
                .parts
                .front_mut()
                .expect("remaining bytes are in parts");
            if cnt < front.len() {
                bytes::Buf::advance(front, cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, p) in dst.iter_mut().zip(self.parts.iter()) {
            *slot = std::io::IoSlice::new(p);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod parts_tests {
    use super::*;
    use bytes::Buf;

    #[tokio::test]
    async fn parts_are_written_in_order_and_in_full() {
        let parts = vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from(vec![7u8; 100_000]),
            Bytes::from_static(b"z"),
        ];
        let mut buf = PartsBuf::new(parts.clone());
        assert_eq!(buf.remaining(), 100_003);
        let mut out = Vec::new();
        tokio::io::AsyncWriteExt::write_all_buf(&mut out, &mut buf)
            .await
            .unwrap();
        let want: Vec<u8> = parts.iter().flat_map(|p| p.to_vec()).collect();
        assert_eq!(out, want);
        let mut b = PartsBuf::new(parts);
        b.advance(3);
        assert_eq!(b.chunk().len(), 99_999);
        b.advance(99_999);
        assert_eq!(b.chunk(), b"z");
    }
}
