import java.io.BufferedInputStream;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.Enumeration;
import java.util.HexFormat;
import java.util.zip.CRC32;
import java.util.zip.ZipEntry;
import java.util.zip.ZipFile;
import java.util.zip.ZipInputStream;

/**
 * Reads every entry of a zip with the JDK's own zip code and reports what it computed.
 *
 * <p>Usage: {@code java tests/support/ZipCheck.java zipfile|zipinputstream|list ARCHIVE.zip}
 * ({@code list}: the central directory through ZipFile, no member data read; size and CRC as recorded).
 *
 * <p>Output, one line per entry in archive order:
 * {@code ENTRY <tab> size <tab> crc32-hex <tab> name-as-utf8-hex <tab> name}, then {@code OK <count>}.
 * The hex name is what tests/support/readers.py parses; the plain name is for people.
 * Exit 0 when every entry read fully and matched its recorded size and CRC, 1 on any
 * read or check failure (message on stderr starting with ERROR), 2 on bad usage.
 */
public final class ZipCheck {
    private static final PrintStream OUT = new PrintStream(System.out, false, StandardCharsets.UTF_8);
    private static final HexFormat HEX = HexFormat.of();

    private ZipCheck() {}

    public static void main(String[] args) {
        if (args.length != 2 || !(args[0].equals("zipfile") || args[0].equals("zipinputstream")
                || args[0].equals("list"))) {
            System.err.println("usage: java ZipCheck.java zipfile|zipinputstream|list ARCHIVE.zip");
            System.exit(2);
        }
        int count;
        try {
            count = args[0].equals("zipfile") ? checkZipFile(args[1])
                    : args[0].equals("list") ? listZipFile(args[1]) : checkZipInputStream(args[1]);
        } catch (Exception e) { // any failure of the JDK reader is a verdict on the archive
            OUT.flush();
            System.err.println("ERROR " + e.getClass().getName() + ": " + e.getMessage());
            System.exit(1);
            return;
        }
        OUT.println("OK " + count);
        OUT.flush();
    }

    /** Random-access read through the central directory, as most Java consumers do. */
    private static int checkZipFile(String path) throws IOException {
        int count = 0;
        try (ZipFile zip = new ZipFile(path)) {
            Enumeration<? extends ZipEntry> entries = zip.entries();
            while (entries.hasMoreElements()) {
                ZipEntry entry = entries.nextElement();
                CRC32 crc = new CRC32();
                long size;
                try (InputStream in = zip.getInputStream(entry)) {
                    size = drain(in, crc);
                }
                // ZipFile does not verify CRCs itself, so compare with the central directory here.
                if (entry.getSize() != -1 && entry.getSize() != size) {
                    throw new IOException(entry.getName() + ": read " + size + " bytes, directory says "
                            + entry.getSize());
                }
                if (entry.getCrc() != -1 && entry.getCrc() != crc.getValue()) {
                    throw new IOException(entry.getName() + ": CRC " + Long.toHexString(crc.getValue())
                            + " != directory " + Long.toHexString(entry.getCrc()));
                }
                report(entry.getName(), size, crc.getValue());
                count++;
            }
        }
        return count;
    }

    /** The central directory only, as ZipFile parses it (ZIP64 end records included). */
    private static int listZipFile(String path) throws IOException {
        int count = 0;
        try (ZipFile zip = new ZipFile(path)) {
            Enumeration<? extends ZipEntry> entries = zip.entries();
            while (entries.hasMoreElements()) {
                ZipEntry entry = entries.nextElement();
                report(entry.getName(), entry.getSize(), entry.getCrc());
                count++;
            }
        }
        return count;
    }

    /** Streaming read of local headers only; cannot handle STORED entries with a data descriptor. */
    private static int checkZipInputStream(String path) throws IOException {
        int count = 0;
        try (ZipInputStream zin = new ZipInputStream(
                new BufferedInputStream(new FileInputStream(path), 1 << 16), StandardCharsets.UTF_8)) {
            ZipEntry entry;
            while ((entry = zin.getNextEntry()) != null) {
                CRC32 crc = new CRC32();
                long size = drain(zin, crc); // ZipInputStream itself throws on CRC or size mismatch
                report(entry.getName(), size, crc.getValue());
                count++;
            }
        }
        if (count == 0 && !startsWithEndRecord(path)) {
            // ZipInputStream reports garbage as an empty archive rather than failing.
            throw new IOException("no entries found and not an empty zip");
        }
        return count;
    }

    private static boolean startsWithEndRecord(String path) throws IOException {
        try (InputStream in = new FileInputStream(path)) {
            byte[] head = in.readNBytes(4);
            return head.length == 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 5 && head[3] == 6;
        }
    }

    private static long drain(InputStream in, CRC32 crc) throws IOException {
        byte[] buf = new byte[1 << 16];
        long total = 0;
        int n;
        while ((n = in.read(buf)) != -1) {
            crc.update(buf, 0, n);
            total += n;
        }
        return total;
    }

    private static void report(String name, long size, long crc) {
        String hexName = HEX.formatHex(name.getBytes(StandardCharsets.UTF_8));
        OUT.printf("ENTRY\t%d\t%08x\t%s\t%s%n", size, crc, hexName, name);
    }
}
