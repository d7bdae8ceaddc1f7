from glob import glob

from setuptools import find_packages, setup

package_name = 'mmdistill_sim'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    package_data={package_name: ['scenarios/*.yaml']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.py')),
        ('share/' + package_name + '/config', glob('config/*')),
    ],
    install_requires=['setuptools', 'numpy', 'scipy', 'pyyaml'],
    zip_safe=False,
    maintainer='mmdistill maintainers',
    maintainer_email='maintainers@mmdistill.dev',
    description='Physically grounded multimodal driving simulator (ROS-free core) and the live sim_node.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'sim_node = mmdistill_sim.sim_node:main',
        ],
    },
)
