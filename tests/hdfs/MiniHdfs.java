// A real HDFS cluster for the test scripts: Hadoop's MiniDFSCluster (one NameNode, N DataNodes,
// everything on 127.0.0.1), driven by one command per line on stdin so that a test can load
// data and stop a DataNode in the middle of a run. The server never uses this: it speaks HDFS
// through hdfs-native. Run by tests/hdfs/start.sh (java single-file source mode).
//
// Usage: MiniHdfs <base dir> <datanodes> <replication> [ha]
// stdout: "ready hdfs://127.0.0.1:<port>" once the cluster is up (with `ha`: two NameNodes of
// nameservice "minins", "ready ha minins nn0=127.0.0.1:<port> nn1=127.0.0.1:<port>", nn0 active),
// then "ok ..." or "error ..." for each command.
// Commands: put <local file or dir> <hdfs path> | stop-datanode <i> | datanodes |
//           failover (HA: stop the active nn0, make nn1 active) | exit
import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.net.InetSocketAddress;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.hdfs.DFSConfigKeys;
import org.apache.hadoop.hdfs.HdfsConfiguration;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.apache.hadoop.hdfs.MiniDFSNNTopology;
import org.apache.hadoop.hdfs.server.namenode.ha.HATestUtil;

public class MiniHdfs {
    public static void main(String[] args) throws Exception {
        if (args.length != 3 && !(args.length == 4 && args[3].equals("ha"))) {
            System.err.println("usage: MiniHdfs <base dir> <datanodes> <replication> [ha]");
            System.exit(2);
        }
        File base = new File(args[0]);
        int datanodes = Integer.parseInt(args[1]);
        Configuration conf = new HdfsConfiguration();
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, base.getAbsolutePath());
        conf.set(DFSConfigKeys.DFS_REPLICATION_KEY, args[2]);
        // Loopback only, ephemeral ports.
        conf.set(DFSConfigKeys.DFS_NAMENODE_RPC_BIND_HOST_KEY, "127.0.0.1");
        conf.set(DFSConfigKeys.DFS_DATANODE_ADDRESS_KEY, "127.0.0.1:0");
        conf.set(DFSConfigKeys.DFS_DATANODE_HTTP_ADDRESS_KEY, "127.0.0.1:0");
        conf.set(DFSConfigKeys.DFS_DATANODE_IPC_ADDRESS_KEY, "127.0.0.1:0");
        conf.set(DFSConfigKeys.DFS_NAMENODE_HTTP_ADDRESS_KEY, "127.0.0.1:0");
        // A stopped DataNode is noticed quickly by clients; the NameNode keeps it "live" for a
        // while, which is what a reader meets in a real outage.
        conf.setInt("dfs.client.socket-timeout", 5000);
        boolean ha = args.length == 4;
        MiniDFSCluster.Builder builder = new MiniDFSCluster.Builder(conf).numDataNodes(datanodes).format(true);
        if (ha) {
            builder.nnTopology(MiniDFSNNTopology.simpleHATopology(2));
        }
        MiniDFSCluster cluster = builder.build();
        FileSystem fs;
        if (ha) {
            cluster.transitionToActive(0);
            cluster.waitActive();
            HATestUtil.setFailoverConfigurations(cluster, conf, "minins");
            fs = HATestUtil.configureFailoverFs(cluster, conf);
            System.out.println("ready ha minins nn0=127.0.0.1:" + cluster.getNameNode(0).getNameNodeAddress().getPort()
                    + " nn1=127.0.0.1:" + cluster.getNameNode(1).getNameNodeAddress().getPort());
        } else {
            cluster.waitActive();
            fs = cluster.getFileSystem();
            InetSocketAddress nn = cluster.getNameNode().getNameNodeAddress();
            System.out.println("ready hdfs://127.0.0.1:" + nn.getPort());
        }
        System.out.flush();

        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            String[] w = line.trim().split("\\s+");
            try {
                switch (w[0]) {
                    case "put":
                        fs.mkdirs(new Path(w[2]).getParent());
                        fs.copyFromLocalFile(false, true, new Path(w[1]), new Path(w[2]));
                        System.out.println("ok put " + w[2]);
                        break;
                    case "stop-datanode":
                        int i = Integer.parseInt(w[1]);
                        cluster.stopDataNode(i);
                        System.out.println("ok stopped datanode " + i);
                        break;
                    case "failover":
                        cluster.shutdownNameNode(0);
                        cluster.transitionToActive(1);
                        System.out.println("ok nn1 active");
                        break;
                    case "datanodes":
                        System.out.println("ok " + cluster.getDataNodes().size());
                        break;
                    case "exit":
                        System.out.println("ok exit");
                        System.out.flush();
                        cluster.shutdown(true);
                        System.exit(0);
                        break;
                    case "":
                        break;
                    default:
                        System.out.println("error unknown command " + w[0]);
                }
            } catch (Exception e) {
                System.out.println("error " + e.toString().replace('\n', ' '));
            }
            System.out.flush();
        }
        // stdin closed: the test process is gone.
        cluster.shutdown(true);
        System.exit(0);
    }
}
